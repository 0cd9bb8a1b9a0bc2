"""Verilog of the core for any array config, generated once and cached on disk."""

import hashlib
import json
import os
from pathlib import Path

from amaranth.back import verilog

from ..hw.config import ArrayConfig
from .toolchain import cache_dir, source_digest, tool_versions

__all__ = ["TOP_NAME", "generate_verilog", "design_key", "verilog_path"]

#: Module name of the generated top level.
TOP_NAME = "sparsemac_core"

_HW_FOLDER = Path(__file__).resolve().parent.parent / "hw"


def design_key(config, extra=""):
    """A short hash naming one design: config, RTL sources and tool versions."""
    if not isinstance(config, ArrayConfig):
        raise TypeError(f"config must be an ArrayConfig, not {config!r}")
    blob = json.dumps({"config": config.as_dict(), "rtl": source_digest(_HW_FOLDER),
                       "tools": tool_versions(), "extra": extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def verilog_path(config):
    """Where the Verilog of ``config`` is cached."""
    return cache_dir("verilog") / f"{TOP_NAME}_{config.key()}_{design_key(config)}.v"


def generate_verilog(config, component=None, name=TOP_NAME):
    """Returns the path of the Verilog of ``component`` (default: the core of ``config``).

    Generated only when the cache has no file for this config, RTL and tool versions. The file is
    written under a temporary name and renamed, so parallel callers never see half a file.
    """
    if component is None:
        path = verilog_path(config)
    else:
        path = cache_dir("verilog") / f"{name}_{config.key()}_{design_key(config, name)}.v"
    if path.exists():
        return path
    if component is None:
        from ..hw.core import SparseMACCore
        component = SparseMACCore(config)
    text = verilog.convert(component, name=name, emit_src=False)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(text)
    temporary.replace(path)
    return path
