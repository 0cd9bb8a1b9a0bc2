"""Library pipelines: the measurements behind the commands, each returning a report dataclass.

They sit in the application layer: they open devices (:mod:`sparsemac.devices`) and may use
every other layer. A command parses its arguments, calls one of these and prints the report;
a notebook calls the same function.
"""

import os
from pathlib import Path

from ...hw.errors import InputError, MissingFileError
from ...sw.methods import CALIBRATED_KINDS, PruningMethod, parse_method
from ...sw.task import calibration_texts

__all__ = ["check_output_path", "check_output_folder", "check_port", "pareto_front",
           "activation_calibration", "method_calibration"]


def check_output_path(path, what):
    """Refuses, before any work is done, an output file that cannot be created: a folder, a
    file under something that is not a folder, a missing folder or one not writable.

    Raises
    ------
    FileNotFoundError
        If the folder of ``path`` does not exist (the message names it and ``what``).
    ValueError
        If ``path`` is a folder, or a part of its folder is a file, or the folder is not
        writable.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"cannot write the {what} {str(path)!r}: it is a folder; give a file "
                         "name")
    _check_writable_folder(path.absolute().parent, f"the {what} {str(path)!r}", create=False)


def check_output_folder(path, what):
    """Refuses, before any work is done, an output folder that cannot be made or written: a
    file, a path under a file, or under a folder not writable. Missing folders are fine: they
    are made when the results are written.

    Raises
    ------
    ValueError
        If ``path`` or the nearest existing folder above it is a file, or is not writable.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"cannot write the {what} in {str(path)!r}: it is a file, not a folder")
    _check_writable_folder(path.absolute(), f"the {what} in {str(path)!r}", create=True)


def _check_writable_folder(folder, target, *, create):
    existing = folder
    while not existing.exists():
        if not create:
            raise MissingFileError(f"cannot write {target}: folder {str(folder)!r} does not "
                                    "exist")
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot write {target}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {target}: folder {str(existing)!r} is not writable")


def check_port(backend, port):
    """Refuses a board serial port without the ``fpga`` back end, and ``fpga`` without one.

    Raises
    ------
    ValueError
        If exactly one of ``backend == "fpga"`` and ``port`` is given.
    """
    if (backend == "fpga") != (port is not None):
        raise InputError("--backend fpga needs --port (the board's serial port), and --port "
                         "is only for --backend fpga")


def pareto_front(items, x, y, *, maximise=False):
    """The indices of the items that no other item beats on both attributes `x` and `y`.

    An item is beaten by one that is at least as good on both and better on one; of items
    equal on both, the first listed is kept.

    Parameters
    ----------
    items : sequence
    x, y : str
        Attribute names of the two figures compared.
    maximise : bool
        Higher is better on both figures (speedup and accuracy); by default lower is (cycles
        and error).

    Returns
    -------
    list of int
        Indices into `items`, by increasing `x`.
    """
    sign = -1 if maximise else 1
    order = sorted(range(len(items)), key=lambda index: (sign * getattr(items[index], x),
                                                         sign * getattr(items[index], y)))
    front, best = [], float("inf")
    for index in order:
        if sign * getattr(items[index], y) < best:
            front.append(index)
            best = sign * getattr(items[index], y)
    return sorted(front, key=lambda index: getattr(items[index], x))


def activation_calibration(activation, texts, seed):
    """The calibration text of a ``relu@S`` activation: `texts` (a calibrated method's), else
    the built-in task's calibration split (seeded by `seed`); None for every other activation.

    Raises
    ------
    ActivationSpecError
        If `activation` does not parse.
    """
    from ...sw.activation_sparsity import parse_activation
    from ...sw.task import calibration_texts

    if activation is None or not parse_activation(activation).calibrated:
        return None
    return texts if texts is not None else calibration_texts(seed=seed)


def method_calibration(method: str | PruningMethod, path=None, *, seed: int = 0
                       ) -> tuple[PruningMethod, list[str] | None]:
    """Parse a method and read its calibration text, before any model or device work.

    Parameters
    ----------
    method : str or PruningMethod
        As :func:`~sparsemac.sw.methods.parse_method`.
    path : str or Path, optional
        A UTF-8 text file, one text a line; None: the built-in task's calibration split
        (:func:`~sparsemac.sw.task.calibration_texts` with `seed`).
    seed : int

    Returns
    -------
    method : PruningMethod
    texts : list of str or None
        None when the method is not calibrated.

    Raises
    ------
    ValueError
        If the method is invalid, `path` is given for a method that takes no calibration
        text, or the file is missing, empty or not UTF-8 (``TaskDataError``, naming it).
    """
    method = parse_method(method)
    if not method.calibrated:
        if path is not None:
            raise InputError(f"calibration text is for {' and '.join(CALIBRATED_KINDS)}; "
                             f"method {method} takes none")
        return method, None
    return method, calibration_texts(path, seed=seed)
