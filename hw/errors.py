"""sparsemac's own errors: the command line turns these, and only these, into messages.

A library function that refuses its input raises :class:`InputError` (a ``ValueError``) or
:class:`MissingFileError` (a ``FileNotFoundError``), so callers that catch the builtin classes
keep working; the ``sparsemac`` command prints them as ``error: ...`` and exits 2. Failures of a
device, a tool or a check are :class:`SparsemacError` subclasses that are also a
``RuntimeError``; the command exits 1 on those. Any other exception is a bug and keeps its
traceback.
"""

__all__ = ["SparsemacError", "InputError", "MissingFileError", "RunFailure"]


class SparsemacError(Exception):
    """Base class of every error sparsemac raises on purpose."""


class InputError(SparsemacError, ValueError):
    """The input is wrong; the message says what to fix."""


class MissingFileError(SparsemacError, FileNotFoundError):
    """A file or folder the input names does not exist; the message names it."""


class RunFailure(SparsemacError, RuntimeError):
    """A tool, a build, a simulation or a distributed run failed; the message says where to
    look."""
