"""The design hash: it follows the elaborated design, not the comments of its sources.

Each test copies hw/ into a temporary package (hw/ imports nothing outside itself), edits the
copy and imports it under another name, so the hash of the edited design is computed for real
and compared with the hash of the design as it is.
"""

import importlib
import shutil
import sys
from pathlib import Path

import pytest

from sparsemac.hw import board_link
from sparsemac.hw.config import ArrayConfig

SMALL = ArrayConfig(lanes=4, token_lanes=2, max_in_features=64)
HW = Path(board_link.__file__).resolve().parent


@pytest.fixture
def edited_copy(tmp_path):
    """A function ``(edits, **options) -> design digest of SMALL`` (with the config fields in
    ``options``) from a copy of hw/ with ``edits`` (file name -> (old text, new text))
    applied, imported as its own package."""
    package = f"hw_copy_{tmp_path.name.replace('-', '_')}"
    imported = []

    def digest(edits, **options):
        shutil.copytree(HW, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
        for name, (old, new) in edits.items():
            path = tmp_path / package / name
            text = path.read_text()
            assert text.count(old) == 1, f"{name}: the edit must match exactly once"
            path.write_text(text.replace(old, new))
        sys.path.insert(0, str(tmp_path))
        imported.append(package)
        try:
            module = importlib.import_module(f"{package}.board_link")
            config_module = importlib.import_module(f"{package}.config")
            config = config_module.ArrayConfig(**(SMALL.as_dict() | options))
            return module.design_digest(config)
        finally:
            sys.path.remove(str(tmp_path))

    yield digest
    for name in list(sys.modules):
        if any(name == package or name.startswith(package + ".") for package in imported):
            del sys.modules[name]


def test_comment_and_docstring_edits_leave_the_hash_unchanged(edited_copy):
    edits = {
        # Lines added at the top shift every source location of the file.
        "mac_array.py": ('"""The MAC array:', '# A comment.\n\n\n"""The MAC array, reworded:'),
        "frame_receiver.py": ("        m = Module()\n",
                              "        # Why: nothing.\n        m = Module()\n"),
        "board_top.py": ("The core behind a UART host link, with status LEDs.",
                         "The core behind a UART host link, with its status LEDs."),
    }
    current = board_link.design_digest(SMALL)
    edited = edited_copy(edits)
    assert edited.value == current.value
    assert edited.modules == current.modules


def test_a_logic_change_alters_the_hash_and_names_the_module(edited_copy):
    current = board_link.design_digest(SMALL)
    edited = edited_copy({"reply_sender.py": ("m.d.comb += self.replies.ready.eq(1)",
                                              "m.d.comb += self.replies.ready.eq(sent[0])")})
    assert edited.value != current.value
    assert edited.changed_modules(current.modules) == ["sparsemac_board.link.sender"]


def test_what_is_built_only_for_the_fpga_is_hashed_too(edited_copy):
    """A registered array's multipliers are DSP blocks only on the ECP5 platform: the hash
    elaborates for the board, so an edit there makes its bitstream stale."""
    registered = ArrayConfig(**(SMALL.as_dict() | {"registered": 1}))
    current = board_link.design_digest(registered)
    edited = edited_copy({"multiplier.py": ('p_RESETMODE="SYNC"', 'p_RESETMODE="ASYNC"')},
                         registered=1)
    assert edited.value != current.value
    assert all("mac_array" in name for name in edited.changed_modules(current.modules))


def test_the_hash_follows_the_config():
    other = ArrayConfig(lanes=3, token_lanes=2, max_in_features=64)
    assert board_link.design_hash(SMALL) != board_link.design_hash(other)
    assert 0 <= board_link.design_hash(SMALL) < 1 << 64


def test_changed_modules_lists_added_and_removed_ones():
    digest = board_link.DesignDigest(value=1, modules={"top": "a", "top.x": "b", "top.y": "c"})
    assert digest.changed_modules({"top": "a", "top.x": "z", "top.w": "d"}) == [
        "-top.w", "top.x", "+top.y"]
