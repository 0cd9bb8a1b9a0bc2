"""Library pipelines: the measurements behind the commands, each returning a report dataclass.

They sit in the application layer: they open devices (:mod:`sparsemac.devices`) and may use
every other layer. A command parses its arguments, calls one of these and prints the report;
a notebook calls the same function.
"""

from pathlib import Path

__all__ = ["check_output_path", "check_port", "activation_calibration"]


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


def activation_calibration(activation, texts, seed):
    """The calibration text of a ``relu@S`` activation: `texts` (a calibrated method's), else
    the built-in task's calibration split (seeded by `seed`); None for every other activation.

    Raises
    ------
    ActivationSpecError
        If `activation` does not parse.
    """
    from ..activation_sparsity import parse_activation
    from ..task import calibration_texts

    if activation is None or not parse_activation(activation).calibrated:
        return None
    return texts if texts is not None else calibration_texts(seed=seed)
