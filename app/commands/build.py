"""``sparsemac build``: the board bitstream, its staleness check, and programming the board."""

import argparse
import shutil
import subprocess
import sys

from .options import (add_config_arguments, config_from_args, non_negative_integer_argument,
                      positive_argument, positive_integer_argument)
from .report_output import finish
from ...hw.errors import InputError

HELP = ("Build the ULX3S bitstream with the open toolchain (Yosys, nextpnr-ecp5, ecppack), check "
        "whether the committed one is stale, or program a board.")

#: Programmers tried in order, with the arguments that load a bitstream into the FPGA's SRAM.
PROGRAMMERS = {
    "openFPGALoader": ["--board", "ulx3s"],
    "fujprog": [],
}

INSTALL_HINT = ("no FPGA programmer found on PATH: install openFPGALoader (Debian/Ubuntu: "
                "`apt-get install openfpgaloader`) or fujprog "
                "(https://github.com/kost/fujprog/releases), then run `sparsemac build --program` "
                "again")


def add_arguments(parser):
    from ...bitstreams.build import (BOARDS, DEFAULT_BOARD, DEFAULT_PLACER, DEFAULT_ROUTER,
                                     PLACERS, ROUTERS)

    parser.add_argument("--board", default=DEFAULT_BOARD,
                        help=f"target board (default: {DEFAULT_BOARD})")
    add_config_arguments(parser, default=(BOARDS[DEFAULT_BOARD].config,))
    parser.add_argument("--output", default=None,
                        help="output folder (default: bitstreams/<board>/ for the board's own "
                             "config, else build/<board>-<config>)")
    parser.add_argument("--clock-mhz", type=positive_argument, default=None,
                        help="board clock made by the PLL from 25 MHz (default: the board's, "
                             f"{BOARDS[DEFAULT_BOARD].clock_hz / 1e6:g} for {DEFAULT_BOARD})")
    parser.add_argument("--baud", type=positive_integer_argument, default=None, help="UART rate (default: 3000000)")
    parser.add_argument("--seed", type=non_negative_integer_argument, default=1,
                        help="nextpnr placement seed (default: 1)")
    parser.add_argument("--router", choices=ROUTERS, default=None,
                        help=f"nextpnr's routing algorithm (default: {DEFAULT_ROUTER})")
    parser.add_argument("--placer", choices=PLACERS, default=None,
                        help="nextpnr's placement algorithm (default: the board's, "
                             f"{BOARDS[DEFAULT_BOARD].placer} for {DEFAULT_BOARD}; nextpnr's own "
                             f"is {DEFAULT_PLACER}; static spreads cells by density)")
    parser.add_argument("--time-limit", type=_seconds, default=None, metavar="SECONDS",
                        help="stop the build (killing the tools) if it runs longer; exit code "
                             f"{TIMEOUT_EXIT} (default: no limit)")
    parser.add_argument("--check", action="store_true",
                        help="only say whether the bitstream in the output folder is stale "
                             "against the current RTL and config (exit 1 if stale)")
    parser.add_argument("--place-only", action="store_true",
                        help="synthesise and place without routing (minutes, not the hour a "
                             "large design's route takes): the resources and nextpnr's Fmax "
                             "estimate; writes nothing outside the build cache")
    parser.add_argument("--program", action="store_true",
                        help="load the bitstream into the board (building it first if stale) "
                             "with openFPGALoader or fujprog")
    parser.add_argument("--json", action="store_true",
                        help="print the build's report as one JSON object")


#: Exit code of a build stopped at its time limit (as coreutils' ``timeout``).
TIMEOUT_EXIT = 124


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise argparse.ArgumentTypeError(f"--time-limit takes a positive number of seconds, "
                                         f"not {text!r}")
    return value


def _rates(args):
    """The clock and baud rate asked for, as keyword arguments of the build functions."""
    rates = {}
    if args.clock_mhz is not None:
        rates["clock_hz"] = round(args.clock_mhz * 1e6)
    if args.baud is not None:
        rates["baud"] = args.baud
    return rates


def find_programmer():
    """The (name, path) of the first programmer on PATH, or None."""
    for name in PROGRAMMERS:
        path = shutil.which(name)
        if path:
            return name, path
    return None


def run(args):
    from pathlib import Path
    from ...bitstreams import build
    from ...sw.progress import progress

    if args.board not in build.BOARDS:
        raise InputError(f"unknown board {args.board!r}: choose one of "
                         f"{', '.join(build.BOARDS)}")
    if args.place_only and (args.program or args.check or args.output is not None
                            or args.router is not None):
        raise InputError("--place-only writes no bitstream: it takes none of --program, "
                         "--check, --output and --router")
    config = config_from_args(args)
    build.check_fits(config, args.board)
    folder = (Path(args.output) if args.output is not None
              else build.default_output(config, args.board))

    def stale_reason():
        try:
            manifest = build.read_manifest(folder)
        except FileNotFoundError as error:
            return str(error)
        # A clock or baud rate asked for is part of what the bitstream must match; the board's
        # own config is built at the board's clock unless another is asked for.
        board = build.BOARDS[args.board]
        clock_hz = (round(args.clock_mhz * 1e6) if args.clock_mhz is not None
                    else board.clock_hz if config == board.config else None)
        asked = {"clock_hz": clock_hz, "baud": args.baud}
        for key, value in asked.items():
            if value is not None and manifest.get(key) != value:
                return f"it was built with {key} {manifest.get(key)}, not {value}"
        return build.check_manifest(manifest, config)

    if args.check:
        reason = stale_reason()
        if reason:
            print(f"stale: {folder / 'sparsemac.bit'}: {reason}")
            return 1
        print(f"up to date: {folder / 'sparsemac.bit'} matches the current RTL of "
              f"{config.describe()}")
        return 0

    if args.place_only:
        try:
            result = build.place_design(config, args.board, seed=args.seed,
                                        time_limit=args.time_limit, placer=args.placer,
                                        log=progress,
                                        **_rates(args))
        except build.BuildTimeout as error:
            print(error, file=sys.stderr)
            return TIMEOUT_EXIT
        return finish(args, result)

    programmer = None
    if args.program:
        programmer = find_programmer()
        if programmer is None:
            print(INSTALL_HINT, file=sys.stderr)
            return 2

    if not args.program or stale_reason():
        try:
            result = build.build_bitstream(config, args.board, folder, seed=args.seed,
                                           time_limit=args.time_limit,
                                           router=args.router or build.DEFAULT_ROUTER,
                                           placer=args.placer,
                                           log=progress, **_rates(args))
        except build.BuildTimeout as error:
            print(error, file=sys.stderr)
            return TIMEOUT_EXIT
        status = finish(args, result)
        if status:
            progress(f"warning: {result.resources.timing_shortfall()}: see {result.report}")
            return status

    if programmer is not None:
        name, path = programmer
        command = [path, *PROGRAMMERS[name], str(folder / "sparsemac.bit")]
        print(" ".join(command))
        return subprocess.run(command).returncode
    return 0
