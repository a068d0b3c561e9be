"""Dashboard pages over 10k stored result rows: time until the charts are drawn, in headless
Debian Chromium (Playwright). The server aggregates; the browser receives only what it plots.

Usage: python benchmarks/dashboard_render.py [--rows 10000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from app.config import Settings
from app.main import create_app
from app.models import Job, ResultRow

METHODS = ["full", "lora", "checkpointing", "wtacrs@0.3", "wtacrs@0.1", "lora+wtacrs@0.3", "crs@0.3", "topk@0.3"]


def fill(app, rows: int) -> str:
    now = dt.datetime.now(dt.timezone.utc)
    per_job = 80
    with app.state.db.scope() as s:
        for j in range(rows // per_job):
            job_id = f"job{j:06d}"
            s.add(
                Job(
                    id=job_id,
                    status="succeeded",
                    spec={"model": "t5-large"},
                    model="t5-large",
                    device="cuda",
                    dtype="fp32",
                    submitted_by="bench",
                    progress=1.0,
                    created_at=now - dt.timedelta(hours=j),
                    outcome={"max_batch": [{"method": m, "max_batch_size": 100 + i} for i, m in enumerate(METHODS)]},
                )
            )
            for i in range(per_job):
                m, b = METHODS[i % len(METHODS)], 2 ** (i // len(METHODS))
                data = {
                    "method": m,
                    "batch_size": b,
                    "mode": "cuda",
                    "peak_bytes": 2**30 * (10 + b),
                    "oom": False,
                    "tokens_per_s": 1000.0 * b,
                    "breakdown": {"parameters": 2**30, "activations": 2**29},
                }
                s.add(
                    ResultRow(
                        job_id=job_id,
                        model="t5-large",
                        method=m,
                        batch_size=b,
                        mode="cuda",
                        dtype="fp32",
                        peak_bytes=data["peak_bytes"],
                        tokens_per_s=data["tokens_per_s"],
                        oom=False,
                        created_at=now - dt.timedelta(hours=j),
                        data=data,
                    )
                )
    return "job000000"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    db = Path(tempfile.mkdtemp()) / "render.db"
    app = create_app(Settings(database_url=f"sqlite:///{db}", admin_token="x"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    job_id = fill(app, args.rows)
    url = f"http://127.0.0.1:{port}"
    pages = {
        "job": (f"/jobs/{job_id}", "#chart-memory .main-svg"),
        "what fits": ("/", "#fits-form"),
        "jobs list": ("/jobs", "#jobs"),
        "compare": ("/compare?model=t5-large", "#chart-compare .main-svg"),
        "history": ("/history?model=t5-large", "#chart-history .main-svg"),
    }
    print(f"# {args.rows} result rows in SQLite, headless chromium, median of {args.repeat}; {dt.date.today()}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(url + "/")  # plotly.js into the cache, as for a returning user
        for name, (path, selector) in pages.items():
            times, size = [], 0
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                response = page.goto(url + path)
                page.wait_for_selector(selector)
                times.append(time.perf_counter() - t0)
                size = len(response.body())
            print(f"{name:<10} {statistics.median(times) * 1000:7.0f} ms  (HTML {size / 1024:.0f} KiB)")
        browser.close()
    server.should_exit = True


if __name__ == "__main__":
    main()
