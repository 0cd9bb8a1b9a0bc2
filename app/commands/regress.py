"""``sparsemac regress``: the cocotb regressions of the core and its blocks on Verilator."""

import random
import sys
import time
from pathlib import Path

from .options import add_config_arguments, add_report_arguments, configs_from_args
from .report_output import check_report_outputs, finish
from ...hw.errors import InputError

HELP = ("run the cocotb regressions (core, CSR streamer, MAC array) on Verilator against the "
        "golden and cycle models")


def add_arguments(parser):
    add_config_arguments(parser, several=True)
    parser.add_argument("--all-configs", action="store_true",
                        help="every config of the regression: the ULX3S build (k8t8i1024p2), "
                             "the lane extremes, odd K and T, with the delta decoder and with "
                             "chunks that span rows")
    parser.add_argument("--testbench", action="append", metavar="NAME",
                        help="run only this testbench: core, streamer or mac_array "
                             "(repeatable; default: all)")
    parser.add_argument("--test", metavar="PATTERN",
                        help="run only tests whose name matches this regular expression, "
                             "e.g. 'case=minilm' or 'test_core/case=tiny$'")
    parser.add_argument("--seed", type=int,
                        help="the regression seed (default: a random one, printed)")
    parser.add_argument("--waves", action="store_true",
                        help="record an FST waveform of every test (a separate, traced build)")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="where results.xml, logs and waveforms go "
                             "(default: the sparsemac cache, regress/)")
    add_report_arguments(parser, printed="the tables", written="one row per test")


def _configs(args):
    from ...sim.regress import NAMED_CONFIGS

    return list(NAMED_CONFIGS.values()) if args.all_configs else configs_from_args(args)


def run(args):
    from ...sim import regress
    from ...sw.progress import progress, progress_bar
    from ...sim.toolchain import cache_dir

    configs = _configs(args)
    unknown = set(args.testbench or ()) - set(regress.TESTBENCHES)
    if unknown:
        raise InputError(f"unknown testbench {sorted(unknown)[0]!r}; "
                         f"known: {', '.join(regress.TESTBENCHES)}")
    check_report_outputs(args)
    testbenches = [regress.TESTBENCHES[name] for name in (args.testbench or regress.TESTBENCHES)]
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    output = args.output or cache_dir("regress")
    total = len(configs) * sum(len(regress.selected_tests(testbench, args.test))
                               for testbench in testbenches)
    if not total:
        raise InputError(f"no test matches {args.test!r}")
    progress(f"seed {seed}; {total} tests on {', '.join(config.key() for config in configs)}; "
             f"results in {output}")

    start = time.monotonic()
    with progress_bar(total, "regress", "test") as progress:
        def on_testbench(config, testbench):
            progress.set_description(f"{config.key()} {testbench.name}")

        def on_test(name, passed):
            progress.update(1)
            if not passed:
                progress.write(f"FAILED {name}")

        runs = regress.run_regression(configs, testbenches, seed, output, args.test, args.waves,
                                      on_test=on_test, on_testbench=on_testbench)
    return finish(args, regress.RegressionReport(runs, seed, output, time.monotonic() - start))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="sparsemac regress", description=HELP)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
