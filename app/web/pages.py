"""What every dashboard page is rendered with: the templates, the `page_json` filter for the JSON
blocks dash.js reads, and `page`, a template as a response."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from app.finite import finite

HERE = Path(__file__).parent
GIB = 2**30
templates = Jinja2Templates(directory=HERE / "templates")
_JSON_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def page_json(value) -> Markup:
    """`value` as JSON for a `<script type="application/json">` block that dash.js reads with
    JSON.parse: no `<`, `>` or `&` left in it (each is its \\u escape, which JSON.parse reads
    back), so no stored string can close the block or open another element. A legacy NaN is null:
    JSON.parse refuses Python's NaN."""
    return Markup(json.dumps(finite(value), allow_nan=False).translate(_JSON_ESCAPES))


templates.env.filters["page_json"] = page_json


def page(request: Request, template: str, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, template, context)
