"""``sparsemac simulate``: one pruned BERT layer on a simulated array, sparse against dense.

The work is :func:`sparsemac.app.pipelines.simulate.simulate_layer`; this command parses, calls
it and prints its report.

Exit status: 0 when both runs are bit-exact and match the cycle model, 1 when not, 2 when the
input is wrong (unknown layer, layer too wide for the array, bad sparsity ...).
"""

from .options import (METHOD_HELP, add_activation_argument, add_backend_arguments,
                      add_calibration_argument, add_config_arguments, add_index_argument,
                      add_memory_arguments, add_model_argument, add_report_arguments,
                      config_from_args, fraction_argument, index_from_args, memory_from_args,
                      method_argument, positive_argument)
from .report_output import check_report_outputs, finish

__all__ = ["HELP", "add_arguments", "run"]

HELP = ("run one pruned layer of a BERT on a simulated array: cycles, speedup over the dense "
        "baseline, bit-exactness")


def add_arguments(parser):
    from ..pipelines.simulate import DEFAULT_FST_LIMIT, DEFAULT_LAYER, DEFAULT_SPARSITY

    add_model_argument(parser)
    parser.add_argument("--layer", default=DEFAULT_LAYER,
                        help="qualified name of the linear to run (default: %(default)s)")
    parser.add_argument("--sparsity", type=fraction_argument, default=None,
                        help=f"fraction of weights to prune, 0 to 1 (default: {DEFAULT_SPARSITY}; "
                             "an N:M method's pattern fixes it, and another value is refused)")
    parser.add_argument("--method", type=method_argument, default="magnitude",
                        help=f"pruning: {METHOD_HELP} (default: %(default)s)")
    add_calibration_argument(parser)
    add_activation_argument(parser, where="; only for a feed-forward output --layer, e.g. "
                                          "encoder.layer.0.output.dense")
    parser.add_argument("--tokens", type=int, default=None,
                        help="repeat the sentence to exactly this many tokens (default: the "
                             "sentence itself)")
    add_backend_arguments(parser)
    add_config_arguments(parser)
    add_memory_arguments(parser)
    add_index_argument(parser)
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds random pruning and the bert-base weights (default: "
                             "%(default)s)")
    add_report_arguments(parser, printed="the table", written="the report as one CSV row")
    parser.add_argument("--fst", metavar="PATH", default=None,
                        help="write an FST waveform of both runs here (verilator only)")
    parser.add_argument("--fst-limit", type=positive_argument, default=DEFAULT_FST_LIMIT / 1e9,
                        metavar="GB",
                        help="refuse, before the run, a waveform estimated larger than this "
                             "(default: %(default).2f GB)")
    parser.add_argument("--board", choices=("ulx3s-85f",), default=None,
                        help="add the estimated wall time on this board, from its committed "
                             "bitstream's clock and the UART link's baud rate")


def run(args):
    from ..pipelines.simulate import simulate_layer
    from ...sw.progress import progress

    check_report_outputs(args)
    report = simulate_layer(
        args.model, args.layer, sparsity=args.sparsity, method=args.method, tokens=args.tokens,
        backend=args.backend, config=config_from_args(args), seed=args.seed, fst=args.fst,
        fst_limit=args.fst_limit * 1e9, port=args.port, board=args.board,
        memory=memory_from_args(args), energy_table=args.energy_table,
        index=index_from_args(args), calibration=args.calibration, activation=args.activation)
    status = finish(args, report)
    if not report.passed:
        progress("FAILED: the device disagrees with the golden model or the cycle model")
    return status
