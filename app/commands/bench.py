"""``sparsemac bench``: how fast the simulators themselves are.

The work is :func:`sparsemac.app.pipelines.simulator_speed.measure_simulator_speed`; this command
parses, calls it, prints its table and writes its figures as JSON.
"""

import json
from pathlib import Path

from .options import add_config_arguments, configs_from_args

__all__ = ["HELP", "add_arguments", "run"]

HELP = "measure the simulators: simulated cycles per second of each back end, build times"


def add_arguments(parser):
    from ...hw.config import ArrayConfig, DEFAULT_CONFIG

    parser.add_argument("--output", type=Path, default=Path("results") / "bench.json",
                        help="JSON file to write (default: %(default)s)")
    # The default array and one with four times its multipliers.
    add_config_arguments(parser, several=True,
                         default=(DEFAULT_CONFIG, ArrayConfig(lanes=16, token_lanes=8)))
    parser.add_argument("--no-cold", action="store_true",
                        help="build nothing: skip the cold Verilator build (the slowest part), "
                             "and Verilator itself for a config that is not cached yet")
    parser.add_argument("--no-amaranth", action="store_true",
                        help="skip the Amaranth simulator")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random jobs")


def run(args):
    from ..pipelines.simulator_speed import measure_simulator_speed
    from ...sw.tables import format_sections

    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = measure_simulator_speed(configs_from_args(args), cold=not args.no_cold,
                                     amaranth=not args.no_amaranth, seed=args.seed)
    args.output.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    print(format_sections(report.sections()))
    print(f"\nwritten to {args.output}")
    return 0
