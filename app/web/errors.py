"""The HTML error page the dashboards answer with (the API answers JSON). Plain HTML with the
site's stylesheet and navigation, so it renders even when the templates cannot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from http import HTTPStatus

from fastapi.responses import HTMLResponse


def error_page(
    status_code: int, message: str, problems: Sequence[str] = (), headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        phrase = "Error"
    items = "".join(f"<li><code>{escape(p)}</code></li>" for p in problems)
    body = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{status_code} {escape(phrase)} · WTA-CRS profiler</title>
  <link rel="stylesheet" href="/static/style.css">
  <link rel="icon" href="/favicon.svg" type="image/svg+xml">
</head>
<body>
<nav><strong>WTA-CRS profiler</strong>
  <a href="/">What fits</a> <a href="/jobs">Jobs</a> <a href="/compare">Compare</a> <a href="/history">History</a> <a href="/docs">API</a></nav>
<main>
  <h1>{status_code} {escape(phrase)}</h1>
  <p class="error" role="alert">{escape(message)}</p>
  {f"<ul>{items}</ul>" if items else ""}
  <p><a href="/jobs">Back to the jobs list</a> · <a href="/">what fits</a></p>
</main>
</body>
</html>
"""
    return HTMLResponse(body, status_code=status_code, headers=dict(headers) if headers else None)
