"""What the commands share: one spelling of each option.

Every command that takes an array configuration calls :func:`add_config_arguments`, so the
configuration is written the same way everywhere: ``--config NAME`` with a name in the format of
:meth:`ArrayConfig.key <sparsemac.hw.config.ArrayConfig.key>` (``k8t4``, ``k1t1i512``), and
``--lanes``, ``--token-lanes``, ``--max-in-features`` to change single fields of it.
"""

import argparse
import dataclasses
import re

from ...devices import BACKENDS
from ...hw.config import DEFAULT_CONFIG, ArrayConfig
from ...hw.formats import ColumnIndex
from ...hw.errors import InputError
from ...sw.activation_sparsity import ACTIVATION_HELP, ActivationSpecError, parse_activation
from ...sw.methods import METHOD_HELP, parse_method

__all__ = ["DEFAULT_BACKEND", "add_config_arguments", "configs_from_args",
           "config_from_args", "add_backend_arguments", "add_memory_arguments",
           "memory_from_args", "add_index_argument", "index_from_args", "add_report_arguments",
           "add_granularity_argument", "METHOD_HELP", "method_argument",
           "add_calibration_argument", "fraction_argument", "positive_argument",
           "positive_integer_argument", "add_model_argument", "add_run_arguments",
           "add_recipe_arguments", "recipe_from_args", "duration_argument",
           "add_smoothing_argument", "activation_argument", "add_activation_argument",
           "CARRIED_ACTIVATION"]

#: The default ``--backend`` of every command that has one: the RTL, cycle-accurate.
DEFAULT_BACKEND = "verilator"

#: :data:`sparsemac.sw.quantisation.DEFAULT_GRANULARITY`, restated so that ``--help`` need not
#: import torch (tests/test_quantisation.py checks that the two agree).
DEFAULT_GRANULARITY = "token"
#: :data:`sparsemac.sw.quantisation.DEFAULT_SMOOTHING_ALPHA`, restated for the same reason.
DEFAULT_SMOOTHING_ALPHA = 0.6

_FIELDS = (("lanes", "K", "nonzero weights per cycle"),
           ("token_lanes", "T", "tokens in parallel"),
           ("max_in_features", "N",
            "activation buffer depth: the widest input of one job (wider layers are tiled)"))


def _config_names(text):
    try:
        return [ArrayConfig.from_key(name) for name in text.split(",") if name.strip()]
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_config_arguments(parser, *, several=False, default=(DEFAULT_CONFIG,)):
    """Adds ``--config`` and the field options of the array configuration.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    several : bool
        Whether the command runs several configurations (``--config`` repeatable or
        comma-separated).
    default : sequence of ArrayConfig
        The configurations used without ``--config``.
    """
    from ...bitstreams.build import BOARDS, DEFAULT_BOARD

    names = ", ".join(config.key() for config in default)
    board_config = BOARDS[DEFAULT_BOARD].config.key()
    title = f"array configuration (default: {names}"
    title += ")" if names == board_config else f"; on a board, its build: {board_config})"
    group = parser.add_argument_group(title)
    group.add_argument("--config", metavar="NAME", type=_config_names,
                       action="extend" if several else "store",
                       help="k<K>t<T>, then i<max in features> if not 4096, d<delta bits> for "
                            "the delta decoder, p2 for the dual-port buffer, s1 for chunks "
                            "that span rows, a1 for dual-sparse jobs and r1 for registered "
                            "stream edges and multipliers, e.g. k8t4, k1t1i512, k8t4d5, k8t4s1, "
                            f"k8t4a1, k8t4r1 or {board_config} "
                            f"(the {DEFAULT_BOARD} build); without it, --backend fpga and --board "
                            "use the board's build"
                            + ("; repeatable or comma-separated" if several else ""))
    for name, metavar, meaning in _FIELDS:
        group.add_argument("--" + name.replace("_", "-"), type=int, metavar=metavar,
                           help=f"{metavar}, {meaning} (changes this field of --config)")
    parser.set_defaults(_default_configs=tuple(default))


def add_model_argument(parser, role=None, *, tokenizer=False):
    """Adds ``--model``: ``minilm`` (the default), ``bert-base`` or a local BERT checkpoint.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    role : str or None
        What the model is to the command, put first in the help (e.g. ``"the dense teacher"``).
    tokenizer : bool
        Whether a local checkpoint must have a tokenizer too.
    """
    parser.add_argument("--model", default="minilm",
                        help=(f"{role}: " if role else "")
                        + "minilm (packaged, real weights), bert-base (BERT-base shapes, seeded "
                          "random weights) or a local BERT checkpoint directory"
                        + (" with a tokenizer" if tokenizer else "") + " (default: %(default)s)")


def configs_from_args(args):
    """The configurations ``args`` names (see :func:`add_config_arguments`), in order.

    Raises
    ------
    TypeError, ValueError
        If a field option makes a configuration out of range.
    """
    configs = args.config or _default_configs(args)
    changes = {name: getattr(args, name) for name, _, _ in _FIELDS
               if getattr(args, name) is not None}
    return list(dict.fromkeys(dataclasses.replace(config, **changes) for config in configs))


def _default_configs(args):
    """Without ``--config``: the config of the board's bitstream when the command runs on a
    board (``--backend fpga``) or estimates for one (``--board``), else the command's own."""
    from ...bitstreams.build import BOARDS, DEFAULT_BOARD

    board = getattr(args, "board", None)
    if board is None and getattr(args, "backend", None) == "fpga":
        board = DEFAULT_BOARD
    return (BOARDS[board].config,) if board in BOARDS else args._default_configs


def config_from_args(args):
    """The one configuration ``args`` names (commands that run one)."""
    configs = configs_from_args(args)
    if len(configs) != 1:
        raise InputError(f"--config names {len(configs)} configurations; this command runs one")
    return configs[0]


def add_backend_arguments(parser):
    """Adds ``--backend`` (default :data:`DEFAULT_BACKEND`) and ``--port`` for ``fpga``."""
    parser.add_argument("--backend", choices=tuple(BACKENDS), default=DEFAULT_BACKEND,
                        help="device that runs the jobs: verilator (the RTL, cycle-accurate), "
                             "reference (golden model and exact cycle model, instant), amaranth "
                             "(Python RTL simulation, slow), fpga (a board; needs --port) "
                             "(default: %(default)s)")
    parser.add_argument("--port", default=None,
                        help="serial port of the board for --backend fpga, e.g. /dev/ttyUSB0")


def add_memory_arguments(parser, energy=True):
    """Adds ``--memory PRESET``, ``--bandwidth WEIGHT[,ACT]`` and (with ``energy``)
    ``--energy-table PATH``.

    Read them back with :func:`memory_from_args` (the model) and ``args.energy_table``.
    """
    from ...sw.memory import PRESETS

    group = parser.add_argument_group("memory feeding the streams (sparsemac.sw.memory)")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--memory", metavar="PRESET", default=None,
                        help=f"{', '.join(PRESETS)} (default: ideal)")
    choice.add_argument("--bandwidth", metavar="WEIGHT[,ACT]", default=None,
                        help="bytes per core cycle of the weight path and, optionally, of the "
                             "activation path (unthrottled when omitted)")
    if energy:
        group.add_argument("--energy-table", metavar="PATH", default=None,
                           help="per-event energies as JSON (default: Horowitz, ISSCC 2014, 45 "
                                "nm; see sw/data/energy_horowitz_45nm.json for the "
                                "format)")


def memory_from_args(args):
    """The :class:`~sparsemac.sw.memory.MemoryModel` of ``--memory`` or ``--bandwidth``.

    Raises
    ------
    MemoryModelError
        If the preset is unknown or a bandwidth is not a positive, finite number.
    """
    from ...sw.memory import memory_preset, parse_bandwidth

    if args.bandwidth is not None:
        return parse_bandwidth(args.bandwidth)
    return memory_preset("ideal" if args.memory is None else args.memory)


def add_index_argument(parser):
    """Adds ``--index csr|delta``: how sparse jobs send their column indices."""
    parser.add_argument("--index", choices=("csr", "delta"), default="csr",
                        help="column indices of the sparse jobs: csr (16-bit columns, 32-bit row "
                             "pointers) or delta (compressed deltas and 16-bit row lengths; needs "
                             "a config with the delta decoder, e.g. k8t4d5) (default: "
                             "%(default)s)")


def index_from_args(args):
    """The :class:`~sparsemac.hw.formats.ColumnIndex` of ``--index``."""
    return ColumnIndex[args.index.upper()]


def add_report_arguments(parser, *, printed, written):
    """Adds ``--json`` and ``--csv PATH``, the two other forms of a command's report.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    printed : str
        What ``--json`` prints instead of, e.g. ``"the table"``.
    written : str
        What ``--csv`` writes, e.g. ``"the report as one CSV row"``.
    """
    parser.add_argument("--json", action="store_true",
                        help=f"print one JSON object instead of {printed}")
    parser.add_argument("--csv", metavar="PATH", default=None,
                        help=f"also write {written} here")


def add_granularity_argument(parser):
    """``--granularity``: one activation scale per call (``tensor``) or per token."""
    parser.add_argument("--granularity", default=DEFAULT_GRANULARITY, choices=("tensor", "token"),
                        help="activation quantisation scale per call or per token "
                             f"(default: {DEFAULT_GRANULARITY}: it costs the array nothing)")


def smoothing_argument(text):
    """argparse type of ``--smoothing``: an alpha from 0 to 1, or None for ``none``."""
    if text.strip().lower() == "none":
        return None
    return fraction_argument(text, what="--smoothing alpha (or none)")


def add_smoothing_argument(parser):
    """``--smoothing ALPHA|none``: the SmoothQuant migration of the offloaded linears."""
    parser.add_argument("--smoothing", metavar="ALPHA", default=DEFAULT_SMOOTHING_ALPHA,
                        type=smoothing_argument,
                        help="SmoothQuant migration strength in [0, 1], from the calibration "
                             "text's activations: the int8 activations get a narrower range, at "
                             "no cost to the array; none: no migration (default: "
                             f"{DEFAULT_SMOOTHING_ALPHA:g})")


def method_argument(text):
    """argparse type of ``--method``: the :class:`~sparsemac.sw.methods.PruningMethod` that
    `text` names (:data:`METHOD_HELP`)."""
    try:
        return parse_method(text)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_calibration_argument(parser):
    """``--calibration PATH``: the calibration text of wanda and sparsegpt."""
    parser.add_argument("--calibration", metavar="PATH", default=None,
                        help="calibration text of wanda and sparsegpt: a UTF-8 file, one text "
                             "a line (default: the 128-tweet calibration split of the built-in "
                             "task, disjoint from its train and test splits)")


def _number(text, convert, accepts, expected):
    """``convert(text)`` if that works and ``accepts`` it, else an argparse error."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not accepts(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}")
    return value


def positive_argument(text):
    """argparse type of a positive number (a size limit, a clock, a rate)."""
    return _number(text, float, lambda value: 0 < value < float("inf"), "a positive number")


def positive_integer_argument(text):
    """argparse type of a positive whole number (a baud rate, a thread count)."""
    return _number(text, int, lambda value: value >= 1, "a whole number of at least 1")


def non_negative_integer_argument(text):
    """argparse type of a whole number of 0 or more (a nextpnr placement seed)."""
    return _number(text, int, lambda value: value >= 0, "a whole number of 0 or more")


def fraction_argument(text, what="sparsity"):
    """argparse type of a sparsity (or of `what`): a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a number from 0 to 1, not {text!r}")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{what} must be from 0 to 1, not {value!r}")
    return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_argument(text):
    """argparse type of a time budget: seconds, or a number with s, m or h."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"time budget {text!r}: write seconds, or a number "
                                         "with s, m or h, e.g. 2700, 45m, 1.5h")
    return float(match[1]) * _UNIT_S[match[2]]


def add_run_arguments(parser, result):
    """The options of a resumable training run (``prune``, ``finetune``): ``--output``,
    ``--resume``, ``--checkpoint-every``, ``--time-budget``, ``--threads``, ``--json``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    result : str
        What the run leaves in ``--output``, e.g. ``"the sparse model"``.
    """
    parser.add_argument("--output", required=True,
                        help=f"directory of the run: its checkpoint, then {result}")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run whose checkpoint is in --output (same model, "
                             "data and recipe)")
    parser.add_argument("--checkpoint-every", type=int, default=50,
                        help="steps between checkpoints (default %(default)s)")
    parser.add_argument("--time-budget", type=duration_argument, default=None,
                        help="wall time this invocation may take, e.g. 45m; at the end it "
                             "checkpoints and stops, and --resume continues")
    parser.add_argument("--threads", type=positive_integer_argument, default=1,
                        help="torch threads (default 1: on a shared 2-core machine a second "
                             "thread waits more than it works; resume bit-exactness needs the "
                             "same count)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def add_recipe_arguments(parser, recipe_class, seeds):
    """The recipe group of a training run, with the options every recipe has: ``--steps``,
    ``--batch-size``, ``--max-tokens``, ``--lr``, ``--warmup`` and ``--seed``.

    Each defaults to None, which keeps the recipe's own default (read back with
    :func:`recipe_from_args`); importing the recipe here would load torch for ``--help``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    recipe_class : str
        The recipe's class name, for the group's description.
    seeds : str
        What ``--seed`` seeds.

    Returns
    -------
    argparse._ArgumentGroup
        The group, for the recipe's other options.
    """
    recipe = parser.add_argument_group(
        "recipe", f"each defaults to {recipe_class}'s value; the command prints the whole recipe")
    recipe.add_argument("--steps", type=int, help="optimiser steps")
    recipe.add_argument("--batch-size", type=int, help="texts per step")
    recipe.add_argument("--max-tokens", type=int, help="tokens a text is cut to in training")
    recipe.add_argument("--lr", dest="learning_rate", type=float,
                        help="peak AdamW learning rate")
    recipe.add_argument("--warmup", type=float, help="fraction of the steps of warm-up")
    recipe.add_argument("--seed", type=int, help=f"seed of {seeds}")
    return recipe


def recipe_from_args(args, recipe_class):
    """Set the torch threads of ``--threads``, build the recipe from the options named after
    its fields (None keeps a field's default) and print the seed and the whole recipe."""
    import torch

    torch.set_num_threads(args.threads)
    given = {field.name: getattr(args, field.name, None)
             for field in dataclasses.fields(recipe_class)}
    recipe = recipe_class(**{name: value for name, value in given.items() if value is not None})
    print(f"seed {recipe.seed}; threads {args.threads}; recipe "
          + ", ".join(f"{name} {value}" for name, value in dataclasses.asdict(recipe).items()),
          flush=True)
    return recipe


def activation_argument(text):
    """argparse type of ``--activation``:
    :func:`~sparsemac.sw.activation_sparsity.parse_activation`."""
    try:
        return parse_activation(text)
    except ActivationSpecError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


#: What a command without ``--activation`` runs: the model's own activation.
CARRIED_ACTIVATION = "as the model carries it: GELU, or a prune checkpoint's own"


def add_activation_argument(parser, without=CARRIED_ACTIVATION, where=""):
    """Adds ``--activation SPEC`` (default None, which the command reads as `without`).

    Parameters
    ----------
    parser : argparse.ArgumentParser or argument group
    without : str
        What the command does without the option, for the help.
    where : str
        A note on where the option applies, appended to the help.
    """
    parser.add_argument("--activation", metavar="SPEC", type=activation_argument, default=None,
                        help=f"{ACTIVATION_HELP}{where} (default: {without})")
