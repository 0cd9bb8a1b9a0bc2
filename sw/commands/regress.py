"""``sparsemac regress``: the cocotb regressions of the core and its blocks on Verilator."""

import random
import sys
import time
from pathlib import Path

from ..tables import format_table
from .options import add_config_arguments, configs_from_args

HELP = ("run the cocotb regressions (core, CSR streamer, MAC array) on Verilator against the "
        "golden and cycle models")


def add_arguments(parser):
    add_config_arguments(parser, several=True)
    parser.add_argument("--all-configs", action="store_true",
                        help="every config of the regression: the ULX3S build (k8t8i1024p2), "
                             "the lane extremes, odd K and T, with the delta decoder and with "
                             "chunks that span rows")
    parser.add_argument("--bench", action="append", metavar="NAME",
                        help="run only this bench: core, streamer or mac_array "
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


def _configs(args):
    from ...sim.regress import NAMED_CONFIGS

    return list(NAMED_CONFIGS.values()) if args.all_configs else configs_from_args(args)


def run(args):
    from ...sim import regress
    from ..progress import progress_bar
    from ...sim.toolchain import cache_dir

    try:
        configs = _configs(args)
        unknown = set(args.bench or ()) - set(regress.BENCHES)
        if unknown:
            raise ValueError(f"unknown bench {sorted(unknown)[0]!r}; "
                             f"known: {', '.join(regress.BENCHES)}")
    except (TypeError, ValueError) as error:
        print(f"sparsemac regress: {error}", file=sys.stderr)
        return 2
    benches = [regress.BENCHES[name] for name in (args.bench or regress.BENCHES)]
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    output = args.output or cache_dir("regress")
    total = sum(len(regress.selected_tests(bench, args.test)) for bench in benches) * len(configs)
    if not total:
        print(f"sparsemac regress: no test matches {args.test!r}", file=sys.stderr)
        return 2
    print(f"seed {seed}; {total} tests on {', '.join(config.key() for config in configs)}; "
          f"results in {output}")

    start = time.monotonic()
    with progress_bar(total, "regress", "test") as progress:
        def on_bench(config, bench):
            progress.set_description(f"{config.key()} {bench.name}")

        def on_test(name, passed):
            progress.update(1)
            if not passed:
                progress.write(f"FAILED {name}")

        runs = regress.run_regression(configs, benches, seed, output, args.test, args.waves,
                                      on_test=on_test, on_bench=on_bench)
    return _report(runs, seed, output, time.monotonic() - start)


def _report(runs, seed, output, seconds):
    from ...sim import regress

    rows = []
    for run in runs:
        passed = sum(result.passed for result in run.results)
        rows.append((run.config.key(), run.bench.name, passed,
                     len(run.results) - passed, sum(result.cycles for result in run.results),
                     f"{sum(result.wall_time for result in run.results):.1f} s"
                     + (f" (+{run.build_seconds:.0f} s build)" if run.compiled else "")))
    print()
    print(format_table(rows, ("config", "test", "passed", "failed", "simulated cycles",
                              "wall time")))
    failures = 0
    for run in runs:
        if run.error:
            failures += 1
            print(f"\nERROR {run.config.key()} {run.bench.name}: {run.error}")
        for result in run.failed:
            failures += 1
            print(f"\nFAILED {run.config.key()} {result.bench} {result.name}\n"
                  f"  {result.message}\n  log: {run.log}")
            if result.waveform is not None:
                print(f"  waveform: {result.waveform}")
            print(f"  replay: {regress.replay_command(run.config, run.bench, result, seed)}")
    print(f"\nJUnit XML: {Path(output) / 'results.xml'}; seed {seed}; {seconds:.0f} s")
    if failures:
        print(f"{failures} failed")
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="sparsemac regress", description=HELP)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
