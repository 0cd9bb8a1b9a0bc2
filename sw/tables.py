"""Reports as text and CSV: the one table printer and the one CSV writer of every command."""

import csv
import dataclasses

from ..hw.errors import InputError

__all__ = ["format_table", "format_sections", "write_csv"]


def format_table(rows, header=None):
    """Rows of strings as aligned columns: the first left-aligned; the others right-aligned
    under a header (figures to compare), left-aligned without one (labelled values)."""
    rows = [list(map(str, row)) for row in ([header] if header else []) + list(rows)]
    widths = [max(len(row[i]) for row in rows if i < len(row))
              for i in range(max(map(len, rows)))]
    lines = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if i and header else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    if header:
        lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_sections(sections):
    """``(title, header, rows)`` tables as indented text under their titles."""
    return "\n\n".join(f"{title}\n" + "\n".join("  " + line for line in
                                                 format_table(rows, header).splitlines())
                       for title, header, rows in sections)


def write_csv(path, rows):
    """Writes rows (dicts with the same keys, or dataclass instances) as CSV, one column per
    key or field, the names as header.

    Raises
    ------
    FileNotFoundError
        If the folder of ``path`` does not exist.
    """
    rows = list(rows)
    if not rows:
        raise InputError("no rows to write")
    rows = [row if isinstance(row, dict) else dataclasses.asdict(row) for row in rows]
    names = list(rows[0])
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(names)
        writer.writerows([row[name] for name in names] for row in rows)
