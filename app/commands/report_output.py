"""The one way out of a command: its report printed, written and turned into an exit status.

A report is any object with ``passed`` (bool), ``sections()`` (the tables of
:func:`~sparsemac.sw.tables.format_sections`), ``as_json()`` (a JSON-ready dict) and, for the
commands that take ``--csv``, ``csv_rows()`` (dicts or dataclasses, one a CSV row).
"""

import json
from pathlib import Path

from ...hw.errors import InputError

__all__ = ["check_report_outputs", "finish"]


def check_report_outputs(args):
    """Refuses, before any work, a ``--csv`` path that cannot be written (see
    :func:`~sparsemac.app.pipelines.check_output_path`)."""
    from ..pipelines import check_output_path

    if getattr(args, "csv", None) is not None:
        check_output_path(args.csv, "CSV report")


def finish(args, report):
    """Prints ``report`` (one JSON object with ``--json``, else its tables), then writes its
    ``csv_rows()`` to ``--csv`` and says where on stderr, so a failed write loses nothing printed.

    Returns
    -------
    int
        The exit status: 0 if the report passed, else 1.

    Raises
    ------
    ValueError
        If the CSV cannot be written (a full disk, say): the message names the file.
    """
    from ...sw.progress import progress
    from ...sw.tables import format_sections, write_csv

    if getattr(args, "json", False):
        print(json.dumps(report.as_json(), indent=2), flush=True)
    else:
        print(format_sections(report.sections()), flush=True)
    if getattr(args, "csv", None) is not None:
        try:
            write_csv(args.csv, report.csv_rows())
        except OSError as error:
            raise InputError(f"cannot write the CSV report {args.csv!r}: "
                             f"{error.strerror or error}; the report is printed above") from None
        progress(f"CSV report written to {Path(args.csv).absolute()}")
    return 0 if report.passed else 1
