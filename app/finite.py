"""JSON has no NaN or Infinity, nor integers past 64 bits anywhere they are stored: requests that
hold them are refused with the field named (`out_of_range`), and what the API writes never holds
them (`finite`, `finite_text`): a legacy stored value is written as null."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from typing import Any

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# What could spell a non-finite number (NaN, Infinity, 1e400) or a 64-bit overflow (19+ digits).
# A body without any of these is passed on unread; one with them (maybe only inside a string) is
# parsed once more and walked, which finds the fields.
_SUSPECT = re.compile(rb"NaN|Infinity|[0-9]{19,}|[eE]\+?[0-9]{3,}")
_SUSPECT_TEXT = re.compile(r"NaN|Infinity")


def out_of_range(raw: bytes, most: int = 20) -> list[dict]:
    """Validation errors (FastAPI's shape, loc starting with "body") for the first `most` numbers
    in a JSON body that are not finite or not 64-bit integers. [] for a body that is not JSON."""
    if not _SUSPECT.search(raw):
        return []
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return []  # not JSON: the model's own parse says what is wrong
    errors: list[dict] = []
    stack: list[tuple[tuple, Any]] = [((), data)]
    while stack and len(errors) < most:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend(((*path, str(k)), v) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(value))))
        elif isinstance(value, float) and not math.isfinite(value):
            errors.append(
                {
                    "type": "finite_number",
                    "loc": ("body", *path),
                    "msg": "Input should be a finite number (JSON has no NaN or Infinity; 1e400 is Infinity)",
                    "input": str(value),
                }
            )
        elif isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
            errors.append(
                {
                    "type": "int_out_of_range",
                    "loc": ("body", *path),
                    "msg": "Input should be an integer from -2^63 to 2^63-1",
                    "input": f"an integer of {len(str(abs(value)))} digits",
                }
            )
    return errors


def finite(value: Any) -> Any:
    """`value` with every NaN and ±Infinity inside it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """json.dumps that writes null for NaN and ±Infinity instead of tokens JSON does not have."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(finite(value), allow_nan=False)


_SPELLED = {"NaN", "Infinity", "-Infinity"}


def finite_text(text: str, numbers: Collection[str] = ()) -> str:
    """JSON text with null for every bare NaN or Infinity, and for those spelled as strings under
    the keys `numbers` (PostgreSQL's JSON writes a non-finite float as "Infinity"); the text
    itself when it holds none (the usual case, found without parsing)."""
    if not _SUSPECT_TEXT.search(text):
        return text
    changed = False

    def fix(value: Any) -> Any:
        nonlocal changed
        if isinstance(value, float) and not math.isfinite(value):
            changed = True
            return None
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if k in numbers and isinstance(v, str) and v in _SPELLED:
                    changed, v = True, None
                out[k] = fix(v)
            return out
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    fixed = fix(json.loads(text))
    return json.dumps(fixed, allow_nan=False) if changed else text
