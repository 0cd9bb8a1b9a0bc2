"""Imports run one way: hw -> sw -> sim -> bitstreams -> devices -> app.

Every module of the package is parsed (not imported) and every import it makes is checked,
including imports inside functions (the lazy imports that keep ``sparsemac --help`` fast) and
the ``"sparsemac.x.y:Class"`` strings :func:`sparsemac.devices.open_device` imports from. A
module may import its own layer and the layers above it (to the left), never one below. Each
layer is one top-level folder.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The layers, top first: package folder -> package name, as pyproject.toml's package-dir maps
#: them.
FOLDERS = {"hw": "sparsemac.hw", "sw": "sparsemac.sw", "sim": "sparsemac.sim",
           "bitstreams": "sparsemac.bitstreams", "devices": "sparsemac.devices",
           "app": "sparsemac.app"}
LAYERS = tuple(FOLDERS)

_MODULE_STRING = re.compile(r"sparsemac(\.\w+)+(:\w+)?")


def layer_of(module):
    """The index in :data:`LAYERS` of a ``sparsemac.*`` module name."""
    for index, package in enumerate(FOLDERS.values()):
        if module == package or module.startswith(package + "."):
            return index
    raise ValueError(f"{module!r} is in no layer")


def package_modules():
    """Module name -> source path of every module of the package."""
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def imported_modules(source, module, is_package, known):
    """The ``sparsemac.*`` modules that ``source`` (the text of ``module``) imports.

    ``from a import b`` counts as importing ``a.b`` when that is a module in ``known``, else
    ``a``; relative imports are resolved against ``module``.
    """
    base = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[:len(base) - node.level + 1]
                target = ".".join(parent + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known
                          else target)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # A module path in a string (open_device's table); file names such as
            # "sparsemac.bit" are not modules of the package.
            if _MODULE_STRING.fullmatch(node.value) and node.value.split(":")[0] in known:
                found.add(node.value.split(":")[0])
    return {name for name in found if name == "sparsemac" or name.startswith("sparsemac.")}


def upward_imports(source, module, is_package, known):
    """``(imported, its layer)`` for every import of ``module`` from a layer below its own."""
    own = layer_of(module)
    return sorted((name, LAYERS[layer_of(name)])
                  for name in imported_modules(source, module, is_package, known)
                  if layer_of(name) > own)


MODULES = package_modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_one_way(module):
    path = MODULES[module]
    upward = upward_imports(path.read_text(), module, path.name == "__init__.py", MODULES)
    assert upward == [], (f"{module} ({LAYERS[layer_of(module)]}) imports from layers below "
                          f"it: {upward}")


def test_every_import_names_a_module_of_the_package():
    for module, path in MODULES.items():
        for name in imported_modules(path.read_text(), module, path.name == "__init__.py",
                                     MODULES):
            assert name in MODULES or name.rsplit(".", 1)[0] in MODULES, (module, name)


def test_the_back_ends_live_in_devices():
    from sparsemac.devices import BACKENDS
    assert {name: path.split(":")[0] for name, path in BACKENDS.items()} == {
        name: f"sparsemac.devices.{name}" for name in ("reference", "amaranth", "verilator",
                                                        "fpga")}
    assert sorted(path.name for path in (ROOT / "devices").glob("*.cpp")) == [
        "board_harness.cpp", "verilator_harness.cpp"]


def test_a_lazy_upward_import_is_caught():
    source = ("from .config import ArrayConfig\n"
              "def run():\n"
              "    from ..sim.toolchain import cache_dir\n"
              "    return 'sparsemac.devices.fpga:FPGADevice'\n")
    assert upward_imports(source, "sparsemac.hw.core", False, MODULES) == [
        ("sparsemac.devices.fpga", "devices"), ("sparsemac.sim.toolchain", "sim")]
    assert upward_imports("from ..devices import open_device\n", "sparsemac.sw.offloaded_linear",
                          False, MODULES) == [("sparsemac.devices", "devices")]
    assert upward_imports("from . import regress\n", "sparsemac.sim", True, MODULES) == []


def test_the_application_may_import_everything():
    source = "from ...devices import open_device\nfrom ...sim import regress\n"
    assert upward_imports(source, "sparsemac.app.commands.simulate", False, MODULES) == []
    assert upward_imports(source.replace("...", ".."), "sparsemac.sw.model_offload", False,
                          MODULES) == [
        ("sparsemac.devices", "devices"), ("sparsemac.sim.regress", "sim")]
    assert layer_of("sparsemac.app.pipelines.simulate") == LAYERS.index("app")
    assert layer_of("sparsemac.sw.device") == LAYERS.index("sw")


def test_the_layers_are_the_top_level_folders():
    packages = sorted(path.name for path in ROOT.iterdir() if (path / "__init__.py").is_file())
    assert packages == sorted(FOLDERS)
