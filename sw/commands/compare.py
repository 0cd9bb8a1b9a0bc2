"""``sparsemac compare``: sweep pruning method and sparsity over a whole offloaded MiniLM and
tabulate cycles saved against output fidelity, with plots.

The work is :func:`sparsemac.sw.pipelines.compare.sweep`; this command parses, calls it and
prints its report.
"""

from .options import (add_config_arguments, add_granularity_argument, add_memory_arguments,
                      configs_from_args, fraction_argument, memory_from_args)

HELP = ("Sweep sparsity and pruning method (and array configs) over a whole offloaded MiniLM: "
        "cycles sparse vs dense, weight bytes and fidelity vs the float model, as CSV, JSON "
        "and PNG plots.")

DEFAULT_SPARSITIES = "0,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95"
DEFAULT_METHODS = "magnitude,random,2:4,1:4"


def _sparsities(text):
    return [fraction_argument(value) for value in text.split(",") if value.strip()]


def _methods(text):
    from .options import method_argument

    return [method_argument(method.strip()) for method in text.split(",") if method.strip()]


def add_arguments(parser):
    parser.add_argument("--model", default="minilm",
                        help="minilm (default) or a local BERT checkpoint with a tokenizer")
    parser.add_argument("--sparsities", type=_sparsities, default=DEFAULT_SPARSITIES,
                        help=f"comma-separated sparsities of magnitude and random pruning "
                             f"(default {DEFAULT_SPARSITIES})")
    parser.add_argument("--methods", type=_methods, default=DEFAULT_METHODS,
                        help=f"comma-separated methods; N:M patterns give one point each at "
                             f"1 - N/M (default {DEFAULT_METHODS})")
    add_config_arguments(parser, several=True)
    add_granularity_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of random pruning (default 0)")
    parser.add_argument("--output", default="results/compare",
                        help="folder for compare.csv, compare.json and the PNG plots "
                             "(default results/compare)")
    parser.add_argument("--verify", action="store_true",
                        help="rerun one point (magnitude 90 %%) on the Verilator device: same "
                             "cycles and bit-exact sums as the reference")
    add_memory_arguments(parser, energy=False)  # issue 12: memory-bound cycles too


def _memory(args):
    """``--memory``/``--bandwidth`` (issue 12): None when neither is given."""
    if args.memory is None and args.bandwidth is None:
        return None
    return memory_from_args(args)


def run(args):
    from ..pipelines.compare import sweep
    from ..tables import format_sections

    print(f"seed {args.seed}")
    report = sweep(args.methods, args.sparsities, configs_from_args(args), model=args.model,
                   granularity=args.granularity, seed=args.seed, output=args.output,
                   verify=args.verify, memory=_memory(args))
    print(format_sections(report.sections()))
    return 0 if report.passed else 1
