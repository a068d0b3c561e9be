"""Results-query latency: 100k stored result rows in PostgreSQL, 50 concurrent clients on loopback.

Starts the API (uvicorn, one process) on a fresh schema, fills it, then runs its own load
generator for a bounded time and prints p50/p95/p99 latency and requests/s.

Usage: python benchmarks/api_latency.py [--rows 100000] [--clients 50] [--seconds 20]
       [--db postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.parse

import psycopg
from local_service import create_schema, free_port, wait_healthy

MODELS = ["bert-base", "bert-large", "t5-base", "t5-large", "gpt2", "llama-1b"]
METHODS = ["full", "lora", "checkpointing", "wtacrs@0.3", "wtacrs@0.1", "lora+wtacrs@0.3", "crs@0.3", "topk@0.3"]


def fill(conn, rows: int) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    jobs = max(1, rows // 100)
    with conn.cursor() as cur:
        with cur.copy(
            "COPY jobs (id, status, spec, model, device, dtype, priority, attempts, max_attempts, "
            "cancel_requested, progress, submitted_by, created_at) FROM STDIN"
        ) as copy:
            for j in range(jobs):
                copy.write_row(
                    (
                        f"j{j:010d}",
                        "succeeded",
                        "{}",
                        MODELS[j % len(MODELS)],
                        "cuda",
                        "fp32",
                        0,
                        1,
                        3,
                        False,
                        1.0,
                        "bench",
                        now - dt.timedelta(minutes=j),
                    )
                )
        with cur.copy(
            "COPY results (job_id, model, method, batch_size, mode, dtype, peak_bytes, "
            "first_step_peak_bytes, activation_bytes, tokens_per_s, oom, device_name, created_at, data) "
            "FROM STDIN"
        ) as copy:
            for i in range(rows):
                j = i // 100
                row = {"method": METHODS[i % len(METHODS)], "batch_size": 2 ** (i % 8)}
                copy.write_row(
                    (
                        f"j{j:010d}",
                        MODELS[j % len(MODELS)],
                        row["method"],
                        row["batch_size"],
                        "cuda",
                        "fp32",
                        10**9 + i,
                        10**9,
                        10**8,
                        1000.0,
                        False,
                        "H100",
                        now - dt.timedelta(minutes=j),
                        json.dumps(row),
                    )
                )
    conn.execute("ANALYZE")


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator shares the server's two cores, so
    it must cost far less per request than the server (httpx costs about as much as the server)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def get(self, path: str) -> int:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status


async def load(host: str, port: int, clients: int, seconds: float, think: float = 0.0) -> tuple[list[float], int]:
    """`clients` connections, all opened and used once before the clock starts; each then sends
    a request, waits for the answer, pauses `think` on average (0: closed loop), repeats."""
    latencies: list[float] = []
    errors = 0
    conns = [Connection(host, port) for _ in range(clients)]
    for c in conns:  # one at a time: a burst of 50 SYNs can overflow the listen backlog (1 s retries)
        await c.open()
        await c.get("/healthz")
    deadline = time.monotonic() + seconds

    async def client(conn: Connection, seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            query = urllib.parse.urlencode({"model": rng.choice(MODELS), "method": rng.choice(METHODS), "limit": 50})
            t0 = time.perf_counter()
            status = await conn.get(f"/api/results?{query}")
            latencies.append(time.perf_counter() - t0)
            errors += status != 200
            if think:
                await asyncio.sleep(rng.uniform(0, 2 * think))  # mean think time, not in lockstep

    await asyncio.gather(*(client(c, i) for i, c in enumerate(conns)))
    for c in conns:
        c.writer.close()
    return latencies, errors


def run_load(*args) -> tuple[list[float], int]:
    try:
        import uvloop

        return uvloop.run(load(*args))
    except ImportError:
        return asyncio.run(load(*args))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--think", type=float, default=0.0, help="mean pause between a client's requests (0: closed loop)")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    schema = create_schema(args.db, "bench")
    port = free_port()
    env = {**os.environ, "DATABASE_URL": schema.url, "WTACRS_ADMIN_TOKEN": "bench"}
    from app.db import Database
    from app.main import migrate

    migrate(Database(schema.url))  # once, before several worker processes would race to do it
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "app.main:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--workers",
            str(args.workers),
        ],
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        with psycopg.connect(schema.dsn) as conn:
            t0 = time.time()
            fill(conn, args.rows)
            conn.commit()
            print(f"# filled {args.rows} result rows in {time.time() - t0:.1f} s")
        run_load("127.0.0.1", port, 5, 2)  # warm-up
        latencies, errors = run_load("127.0.0.1", port, args.clients, args.seconds, args.think)
        q = statistics.quantiles(latencies, n=100)
        print(
            f"# results query, {args.rows} rows in PostgreSQL, {args.clients} clients, {args.seconds:.0f} s, "
            f"think {args.think * 1000:.0f} ms, {args.workers} uvicorn process(es), loopback, load generator on this "
            f"machine; {dt.date.today()} {os.uname().nodename} ({os.cpu_count()} cores)"
        )
        print(f"requests {len(latencies)}  errors {errors}  rps {len(latencies) / args.seconds:.0f}")
        print(f"p50 {q[49] * 1000:.1f} ms  p95 {q[94] * 1000:.1f} ms  p99 {q[98] * 1000:.1f} ms")
    finally:
        server.terminate()
        server.wait(timeout=30)
        schema.drop()


if __name__ == "__main__":
    main()
