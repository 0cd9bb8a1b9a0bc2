"""``sparsemac bert``: run real sentences through a whole BERT whose encoder linears are pruned
and offloaded to a device, and report the cycles saved and what the outputs lost.

The work is :func:`sparsemac.app.pipelines.bert.measure_bert`; this command parses, calls it and
prints its report.
"""

from .options import (METHOD_HELP, add_activation_argument, add_backend_arguments,
                      add_calibration_argument, add_config_arguments, add_granularity_argument,
                      add_smoothing_argument,
                      add_index_argument, add_memory_arguments, add_model_argument,
                      add_report_arguments, config_from_args, fraction_argument,
                      index_from_args, memory_from_args, method_argument)
from .report_output import check_report_outputs, finish

HELP = ("Offload every encoder linear of a BERT to a device, run a sentence, and report sparse "
        "vs dense cycles per layer and the output fidelity against the model as given.")


def add_arguments(parser):
    add_model_argument(parser)
    add_backend_arguments(parser)
    parser.add_argument("--sparsity", type=fraction_argument, default=None,
                        help="fraction of weights pruned (default 0.9; fixed by the pattern "
                             "for N:M methods)")
    parser.add_argument("--method", type=method_argument, default="magnitude",
                        help=f"{METHOD_HELP} (default: %(default)s)")
    add_calibration_argument(parser)
    add_activation_argument(parser)
    parser.add_argument("--scope", default="local", choices=("local", "global"),
                        help="one threshold per layer (local) or over all layers (global)")
    add_granularity_argument(parser)
    add_smoothing_argument(parser)
    parser.add_argument("--text", default=None,
                        help="the sentence to run (default: the built-in 16-token sentence)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="exact sequence length: the text is repeated or cut to fill it")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of random pruning and of bert-base's weights (default 0)")
    add_config_arguments(parser)
    add_memory_arguments(parser)
    add_index_argument(parser)
    parser.add_argument("--verify", action="store_true",
                        help="measure the dense baseline on the device instead of predicting "
                             "it with the cycle model")
    add_report_arguments(parser, printed="the tables", written="the per-layer figures as CSV")


def run(args):
    from ..pipelines.bert import measure_bert

    check_report_outputs(args)
    report = measure_bert(
        args.model, backend=args.backend, sparsity=args.sparsity, method=args.method,
        scope=args.scope, granularity=args.granularity, text=args.text, tokens=args.tokens,
        seed=args.seed, config=config_from_args(args), verify=args.verify, port=args.port,
        memory=memory_from_args(args), energy_table=args.energy_table,
        index=index_from_args(args), calibration=args.calibration, activation=args.activation,
        smoothing=args.smoothing)
    return finish(args, report)
