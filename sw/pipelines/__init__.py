"""Library pipelines: the measurements behind the commands, each returning a report dataclass.

They sit in the application layer: they open devices (:mod:`sparsemac.devices`) and may use
every other layer. A command parses its arguments, calls one of these and prints the report;
a notebook calls the same function.
"""

from pathlib import Path

__all__ = ["check_output_path", "check_port", "pareto_front"]


def check_output_path(path, what):
    """Refuses an output file whose folder does not exist, before any work is done.

    Raises
    ------
    FileNotFoundError
        If the folder of ``path`` does not exist (the message names it and ``what``).
    """
    folder = Path(path).expanduser().resolve().parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write the {what} {str(path)!r}: folder {str(folder)!r} "
                                "does not exist")


def check_port(backend, port):
    """Refuses a board serial port without the ``fpga`` back end, and ``fpga`` without one.

    Raises
    ------
    ValueError
        If exactly one of ``backend == "fpga"`` and ``port`` is given.
    """
    if (backend == "fpga") != (port is not None):
        raise ValueError("--backend fpga needs --port (the board's serial port), and --port "
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
