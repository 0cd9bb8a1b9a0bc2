"""``sparsemac sweep``: a design-space sweep from a TOML spec, on a local or remote Dask cluster.

Exit status: 0 when every point of the spec has a result, 1 when some point failed (its error is
in the results table), 2 for bad input (spec, output folder, cluster options, or a scheduler
that does not answer).
"""

from .report_output import finish

#: What Ctrl-C leaves (see :mod:`sparsemac.app.cli`).
INTERRUPTED = ("every finished point is in the results table: run the same command again to "
               "compute the rest")

HELP = ("sweep array configs x models x layers x pruning methods x sparsities on Dask: cycles "
        "and fidelity per point in one CSV, Pareto plots and a summary (see docs/sweeps.md)")


def add_arguments(parser):
    parser.add_argument("spec", help="the sweep's TOML spec, e.g. docs/examples/sweep.toml")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder of the results table (sweep.csv) and plots; points "
                             "already in its table are not computed again")
    parser.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                        help="a running Dask scheduler (default: start a local cluster)")
    parser.add_argument("--workers", type=int, default=None,
                        help="local cluster workers (default: one per CPU core)")
    parser.add_argument("--threads-per-worker", type=int, default=1,
                        help="threads of each local worker (default: %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the tables")


def run(args):
    from ..pipelines.sweep import run_sweep

    report = run_sweep(args.spec, args.output, scheduler=args.scheduler, workers=args.workers,
                       threads_per_worker=args.threads_per_worker)
    return finish(args, report)
