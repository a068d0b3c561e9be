"""Queue soak: N workers, M tiny jobs on PostgreSQL, one worker killed -9 mid-run.

Checks from the job-events table that every job ended exactly once, that no job was held by two
workers at once (every re-claim follows a lease expiry), and that results were stored once.

Usage: python benchmarks/queue_soak.py [--jobs 200] [--workers 4] [--lease 6]
       [--db postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time

import httpx
import psycopg
from local_service import create_schema, free_port, wait_healthy

TOKEN = "soak-admin"
SPEC = {
    "model": "bert-tiny",
    "methods": ["full"],
    "seq_len": 16,
    "batch_sizes": [2],
    "device": "estimate",
    "measurements": ["peak_memory"],
    "steps": 1,
    "warmup": 0,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--lease", type=float, default=6.0)
    ap.add_argument("--deadline", type=float, default=1500, help="give up after this many seconds")
    ap.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    schema = create_schema(args.db, "soak")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logs = tempfile.mkdtemp()
    env = {
        **os.environ,
        "DATABASE_URL": schema.url,
        "WTACRS_ADMIN_TOKEN": TOKEN,
        "WTACRS_TOKEN": TOKEN,
        "WTACRS_LEASE_SECONDS": str(args.lease),
    }
    cli = [sys.executable, "-m", "app.cli"]
    procs = [
        subprocess.Popen(
            cli + ["serve", "--port", str(port), "--no-worker"],
            env=env,
            stdout=open(f"{logs}/server.log", "w"),
            stderr=subprocess.STDOUT,
        )
    ]
    t0 = time.time()
    try:
        wait_healthy(url)
        h = {"Authorization": f"Bearer {TOKEN}"}
        ids = [
            httpx.post(url + "/api/jobs", json={**SPEC, "seed": i}, headers=h, timeout=30).json()["id"]
            for i in range(args.jobs)
        ]
        workers = [
            subprocess.Popen(
                cli + ["worker", "--api", url, "--name", f"w{i}", "--poll", "0.5"],
                env=env,
                stdout=open(f"{logs}/w{i}.log", "w"),
                stderr=subprocess.STDOUT,
            )
            for i in range(args.workers)
        ]
        procs += workers
        victim_killed_at = None
        while time.time() - t0 < args.deadline:
            jobs = httpx.get(url + "/api/jobs", params={"limit": 500}, timeout=30).json()["items"]
            counts = collections.Counter(j["status"] for j in jobs)
            if victim_killed_at is None and counts["succeeded"] >= args.jobs // 4:
                workers[0].send_signal(signal.SIGKILL)  # mid-run: it holds a job now or soon
                victim_killed_at = time.time() - t0
            if counts["succeeded"] + counts["failed"] + counts["cancelled"] == args.jobs:
                break
            time.sleep(2)
        elapsed = time.time() - t0
        with psycopg.connect(schema.dsn) as conn:
            events = conn.execute("SELECT job_id, kind, actor, attempt FROM job_events ORDER BY id").fetchall()
            stored = dict(conn.execute("SELECT job_id, count(*) FROM results GROUP BY job_id").fetchall())
        by_job = collections.defaultdict(list)
        for job_id, kind, actor, attempt in events:
            by_job[job_id].append((kind, actor, attempt))
        terminal = {"succeeded", "failed", "cancelled"}
        ended_once = sum(sum(k in terminal for k, _, _ in ev) == 1 for ev in by_job.values())
        overlaps = 0
        for ev in by_job.values():
            holding = False
            for kind, _, _ in ev:
                if kind == "claimed":
                    overlaps += holding
                    holding = True
                elif kind in ("lease_expired", "retry") or kind in terminal:
                    holding = False
        reclaimed = sum(any(k == "lease_expired" for k, _, _ in ev) for ev in by_job.values())
        print(
            f"# queue soak: {args.jobs} jobs, {args.workers} workers, PostgreSQL, lease {args.lease:g} s, worker w0 "
            f"killed -9 at {victim_killed_at:.0f} s; {dt.date.today()} {os.uname().nodename} ({os.cpu_count()} cores)"
        )
        final = collections.Counter(
            j["status"] for j in httpx.get(url + "/api/jobs", params={"limit": 500}).json()["items"]
        )
        print(f"finished in {elapsed:.0f} s: {dict(final)}")
        print(f"jobs that ended exactly once: {ended_once}/{len(ids)}")
        print(f"claims while another worker held the job: {overlaps}")
        print(f"jobs re-claimed after the kill: {reclaimed}")
        print(f"jobs with results stored exactly once: {sum(stored.get(i) == 1 for i in ids)}/{len(ids)}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        schema.drop()


if __name__ == "__main__":
    main()
