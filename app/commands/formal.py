"""``sparsemac formal``: formal proofs of the core's blocks with SymbiYosys and Boolector."""

import time

from .options import add_report_arguments
from .report_output import check_report_outputs, finish

HELP = ("prove the stream handshakes, the CSR streamer's conservation and the core's job "
        "contract formally (SymbiYosys + Boolector from PyPI)")


def add_arguments(parser):
    parser.add_argument("--all", action="store_true",
                        help="also the slow proofs (every configuration, bounded liveness)")
    parser.add_argument("--block", action="append", metavar="NAME",
                        help="only this block, e.g. CSRWeightStreamer (repeatable)")
    parser.add_argument("--property", action="append", metavar="NAME",
                        help="only this property set, e.g. protocol (repeatable)")
    parser.add_argument("--config", action="append", metavar="NAME",
                        help="only this configuration, k<K>t<T> (s1: chunks span rows), e.g. k2t1 "
                             "or k2t1s1 (repeatable)")
    parser.add_argument("--jobs", type=int, default=2, metavar="N",
                        help="proofs run at once (default: 2)")
    add_report_arguments(parser, printed="the tables", written="one row per proof")


def run(args):
    from ...sim.formal.runner import run_proofs
    from ...sim.formal.suite import select

    check_report_outputs(args)
    specs = select(everything=args.all, blocks=args.block, props=args.property,
                   configs=args.config)
    print(f"{len(specs)} proofs, {args.jobs} at once")
    start = time.monotonic()
    done = []

    def on_result(result):
        done.append(result)
        print(f"[{len(done)}/{len(specs)} {time.monotonic() - start:6.1f} s] {result.status:7} "
              f"{result.spec.name} ({result.seconds:.1f} s)", flush=True)

    report = run_proofs(specs, jobs=args.jobs, on_result=on_result)
    print()
    return finish(args, report)
