"""Where generated files live: one build cache outside the source tree."""

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts):
    """The build cache, outside the source tree: ``$SPARSEMAC_CACHE`` or ``~/.cache/sparsemac``,
    joined with ``parts`` and created if missing."""
    base = os.environ.get("SPARSEMAC_CACHE") or Path.home() / ".cache" / "sparsemac"
    path = Path(base, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
