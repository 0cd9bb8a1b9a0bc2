"""The ``sparsemac`` command line: one program, one subcommand per job.

Each subcommand lives in ``sparsemac.app.commands.<name>`` and defines ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Those modules import heavy libraries
(torch, transformers, the simulators) inside ``run`` so that ``sparsemac --help`` stays fast.
"""

import argparse
import importlib
import signal
import sys
import threading

from ..hw.errors import InputError, MissingFileError, SparsemacError

__all__ = ["main"]

COMMANDS = ("simulate", "regress", "bench", "bert", "compare", "build", "formal", "sweep",
            "prune", "finetune")


#: What Ctrl-C leaves, said instead of a traceback; a command module may say more in its own
#: ``INTERRUPTED`` (how to continue).
INTERRUPTED = "nothing it had written is lost"

#: The exit status of a command stopped by Ctrl-C (128 + SIGINT), as a shell reports it.
INTERRUPTED_EXIT = 130


def build_parser():
    parser = argparse.ArgumentParser(
        prog="sparsemac",
        description="Sparse MAC array co-design toolkit: prune a BERT, stream its weights in CSR "
                    "to an int8 MAC array, and count the cycles saved against the dense baseline.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"sparsemac.app.commands.{name}")
        subparser = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(subparser)
        subparser.set_defaults(handler=module.run,
                               interrupted=getattr(module, "INTERRUPTED", INTERRUPTED))
    return parser


def main(argv=None):
    """Runs one subcommand; returns its exit status.

    Exit status 2 means bad input (the message says what to fix), 1 a failed check or a device,
    build or tool failure, 130 an interruption by Ctrl-C or SIGTERM, 0 success. Only sparsemac's own
    errors (:mod:`sparsemac.hw.errors`) become messages: any other exception is a bug and
    keeps its traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    # SIGTERM (a job scheduler's, `kill`'s) stops a command as Ctrl-C does: the tools it started
    # are killed with it and it says what is kept, instead of leaving them running.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    try:
        return args.handler(args) or 0
    except (InputError, MissingFileError) as error:
        print(f"sparsemac {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nsparsemac {args.command}: interrupted; {args.interrupted}", file=sys.stderr)
        return INTERRUPTED_EXIT
    except SparsemacError as error:  # DeviceError, ToolMissingError, CoreTimeout, ...
        print(f"sparsemac {args.command}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
