"""``sparsemac compare``: the speed-accuracy front of pruning methods x sparsities (and
distilled checkpoints) on a whole offloaded BERT, with the task accuracy of each point.

The work is :func:`sparsemac.app.pipelines.compare.measure_front`; this command parses, calls it and
prints its report. Exit status: 0, 1 when a host/device or Verilator check fails, 2 for bad
input.
"""

import argparse

from .options import (METHOD_HELP, add_activation_argument, add_calibration_argument,
                      add_config_arguments, add_granularity_argument, add_index_argument,
                      add_memory_arguments, add_smoothing_argument, configs_from_args,
                      fraction_argument, index_from_args, memory_from_args, method_argument,
                      positive_integer_argument)
from .report_output import finish

HELP = ("The speed-accuracy front: prune a whole BERT with each method at each sparsity "
        "(and take distilled checkpoints), offload it, and measure cycles sparse vs dense on "
        "the device and accuracy on the built-in tweet task (a task model from sparsemac "
        "finetune: its own accuracy on 4,000 held-out tweets with 95 %% intervals and drops "
        "paired with the float model; an embedding model: the quick check, a refitted probe); "
        "table, CSV, JSON and a PNG plot.")

# Restated from sparsemac.app.pipelines.compare so that --help does not import torch
# (tests/test_compare.py checks that they agree).
DEFAULT_METHODS = "magnitude,sparsegpt"
DEFAULT_SPARSITIES = "0.5,0.8"
DEFAULT_TRAIN, DEFAULT_TEST, DEFAULT_WORKLOAD = 800, 400, 16


def _sparsities(text):
    return [fraction_argument(value) for value in text.split(",") if value.strip()]


def _methods(text):
    if text.strip().lower() == "none":  # said outright: the float and int8 rows only
        return []
    methods = [method_argument(method.strip()) for method in text.split(",") if method.strip()]
    if not methods:
        raise argparse.ArgumentTypeError(f"--methods names no method: give one or more of "
                                         f"{METHOD_HELP}, or none for the float and int8 "
                                         "rows only")
    return methods


def _directories(text):
    return [name.strip() for name in text.split(",") if name.strip()]


def add_arguments(parser):
    parser.add_argument("--model", default="minilm",
                        help="the float model: minilm (default), a local BERT checkpoint "
                             "directory with a tokenizer, or a task model from sparsemac "
                             "finetune (scored on its own splits: --train and --test are the "
                             "quick check's)")
    parser.add_argument("--checkpoints", metavar="DIR[,DIR...]", type=_directories,
                        default=[],
                        help="pruned checkpoints of the same model (e.g. from sparsemac prune), "
                             "each a point offloaded with its zeros as they are; task models "
                             "if and only if --model is one")
    parser.add_argument("--methods", type=_methods, default=DEFAULT_METHODS,
                        help=f"comma-separated pruning methods: {METHOD_HELP}; an N:M pattern "
                             f"is one point at 1 - N/M; none: the float and int8 rows only "
                             f"(default {DEFAULT_METHODS})")
    parser.add_argument("--sparsities", type=_sparsities, default=DEFAULT_SPARSITIES,
                        help=f"comma-separated sparsities of the other methods (default "
                             f"{DEFAULT_SPARSITIES})")
    parser.add_argument("--train", type=positive_integer_argument, default=DEFAULT_TRAIN,
                        help=f"quick check: tweets the probes are fitted on (default "
                             f"{DEFAULT_TRAIN})")
    parser.add_argument("--test", type=positive_integer_argument, default=DEFAULT_TEST,
                        help=f"quick check: tweets the probes are scored on (default "
                             f"{DEFAULT_TEST}). A "
                             "point embeds train + test tweets through its int8 model: 145 to "
                             "235 s for the defaults on a 2-core machine at load average 10, "
                             "plus 90 to 150 s of pruning for sparsegpt (wanda: about 90 s), "
                             "so the default front (float, int8 and 4 pruned points) takes "
                             "about 18 minutes at that load, half that at load 2 to 4. One "
                             f"point of accuracy is {DEFAULT_TEST // 100} test tweets: the "
                             "binomial standard error at 70 %% is 2.3 points: a task model's "
                             "4,000 held-out tweets and paired drops separate close points")
    parser.add_argument("--workload", type=positive_integer_argument, default=DEFAULT_WORKLOAD,
                        help="test tweets, in one batch, whose cycles are measured on the "
                             f"device (default {DEFAULT_WORKLOAD})")
    parser.add_argument("--data", metavar="CSV", default=None,
                        help="labelled task instead of the built-in tweets: a UTF-8 CSV with "
                             "text and label columns")
    add_calibration_argument(parser)
    add_activation_argument(parser, without="none, GELU as trained",
                            where="; of the int8 and pruned points (checkpoints keep their own)")
    add_config_arguments(parser, several=True)
    add_granularity_argument(parser)
    add_smoothing_argument(parser)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the task's splits and of random pruning (default 0)")
    parser.add_argument("--output", default="results/compare",
                        help="folder for compare.csv, compare.json and front.png "
                             "(default results/compare)")
    parser.add_argument("--verify", action="store_true",
                        help="rerun the fastest point within 1 point of the float model on "
                             "the Verilator device, one tweet: same cycles and bit-exact sums "
                             "as the reference")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the tables")
    add_memory_arguments(parser, energy=False)  # memory-bound cycles too
    add_index_argument(parser)


def _memory(args):
    """``--memory``/``--bandwidth``: None when neither is given."""
    if args.memory is None and args.bandwidth is None:
        return None
    return memory_from_args(args)


def run(args):
    from ..pipelines.compare import measure_front
    from ...sw.progress import progress
    from ...sw.task import SplitSizes

    progress(f"seed {args.seed}")
    report = measure_front(args.methods, args.sparsities, model=args.model,
                           checkpoints=args.checkpoints, configs=configs_from_args(args),
                           granularity=args.granularity, seed=args.seed,
                           sizes=SplitSizes(train=args.train, test=args.test),
                           workload=args.workload, data=args.data,
                           calibration=args.calibration, output=args.output,
                           verify=args.verify, memory=_memory(args),
                           index=index_from_args(args), smoothing=args.smoothing,
                           activation=args.activation)
    return finish(args, report)
