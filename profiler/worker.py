"""A GPU (or CPU) worker: claims jobs from the server over HTTP, runs them through the profiler,
heartbeats from its own thread while the measurement runs, and posts the result."""

from __future__ import annotations

import logging
import platform
import threading
import time

import httpx
from pydantic import ValidationError

from contract.results import JobStatus
from contract.spec import MAX_CPU_RANKS, JobSpec

from .runner import run_job

log = logging.getLogger("wtacrs.worker")
POST_TRIES = 12  # about 4.5 minutes of backoff (capped at 30 s) for a server that is restarting


class LeaseLost(Exception):
    pass


class Api:
    def __init__(self, url: str, token: str, timeout: float = 30.0):
        self.http = httpx.Client(
            base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def post(self, path: str, body: dict | None = None) -> httpx.Response:
        r = self.http.post(path, json=body or {})
        if r.status_code == 409:
            raise LeaseLost(r.json().get("detail", "lease lost"))
        if r.status_code >= 400:
            raise RuntimeError(f"POST {path} -> {r.status_code}: {r.text[:500]}")
        return r


def device_info() -> dict:
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return {"device_name": props.name, "device_memory_bytes": props.total_memory}
    except ImportError:
        pass
    return {"device_name": f"cpu ({platform.machine()})", "device_memory_bytes": None}


def capabilities() -> dict:
    """What this host can run, sent with every claim: the server hands a `cuda` job with parallel
    world_size N only to a worker with N GPUs or more (CUDA_VISIBLE_DEVICES narrows them). A `cpu`
    job's ranks are processes here, which any worker can start. Sent in the claim, not at
    registration: a server older than this ignores a claim's body but refuses unknown fields."""
    gpus, memory = 0, None
    try:
        import torch

        if torch.cuda.is_available():
            gpus = torch.cuda.device_count()
            memory = min((torch.cuda.get_device_properties(i).total_memory for i in range(gpus)), default=None)
    except ImportError:
        pass
    return {"gpus": gpus, "gpu_memory_bytes": memory, "cpu_ranks": MAX_CPU_RANKS}


class Heartbeat(threading.Thread):
    """Renews the lease and carries progress while the main thread measures."""

    def __init__(self, api: Api, worker_id: str, job_id: str, attempt: int, every: float):
        super().__init__(daemon=True)
        self.api, self.path, self.attempt, self.every = api, f"/api/workers/{worker_id}/jobs/{job_id}", attempt, every
        self.progress, self.message = 0.0, "started"
        self.cancel = self.lost = False
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                reply = self.api.post(
                    f"{self.path}/heartbeat",
                    {"attempt": self.attempt, "progress": self.progress, "message": self.message},
                ).json()
                self.cancel = self.cancel or reply["cancel"]
            except LeaseLost:
                self.lost = True
                return
            except Exception as err:  # the server may be restarting: keep trying until the lease says otherwise
                log.warning("heartbeat failed: %s", err)


def run_claimed(api: Api, worker_id: str, claimed: dict, isolate: bool = True) -> str:
    job_id, attempt = claimed["job_id"], claimed["attempt"]
    path = f"/api/workers/{worker_id}/jobs/{job_id}"
    try:
        spec = JobSpec.model_validate(claimed["spec"])
    except ValidationError as err:  # a bad spec is final: retrying cannot fix it
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in err.errors()[:5])
        api.post(f"{path}/fail", {"attempt": attempt, "error": f"invalid spec: {problems}", "retryable": False})
        return "failed"
    beat = Heartbeat(api, worker_id, job_id, attempt, every=max(0.2, claimed["lease_seconds"] / 4))
    beat.start()

    def progress(done: int, total: int, message: str) -> None:
        beat.progress, beat.message = done / max(total, 1), message

    try:
        result = run_job(
            spec, job_id=job_id, progress=progress, isolate=isolate, should_cancel=lambda: beat.cancel or beat.lost
        )
    except Exception as err:  # infrastructure trouble (CUDA init, disk, ...): someone may retry
        beat.stopped.set()
        api.post(f"{path}/fail", {"attempt": attempt, "error": f"{type(err).__name__}: {err}", "retryable": True})
        return "retry"
    try:
        if beat.lost:
            log.warning("job %s attempt %s: lease lost, result discarded", job_id, attempt)
            return "lost"
        if result.status == JobStatus.cancelled:
            api.post(f"{path}/fail", {"attempt": attempt, "error": "cancelled", "retryable": False, "cancelled": True})
            return "cancelled"
        # the result is the one thing not to lose: the heartbeat keeps the lease while the server is
        # away (a restart), so retrying for minutes does not hand the job to another worker meanwhile
        for i in range(POST_TRIES):
            if beat.lost:
                return "lost"
            try:
                api.post(f"{path}/result", {"attempt": attempt, "result": result.model_dump(mode="json")})
                return result.status.value
            except (httpx.TransportError, RuntimeError) as err:
                log.warning("posting result failed (%s), retrying", err)
                time.sleep(min(2**i, 30))
        raise RuntimeError(f"could not post the result after {POST_TRIES} tries")
    except LeaseLost:
        return "lost"
    finally:
        beat.stopped.set()


def serve_forever(
    url: str, token: str, name: str | None = None, poll_s: float = 2.0, once: bool = False, isolate: bool = True
) -> None:
    api = Api(url, token)
    while True:
        try:
            worker_id = api.post("/api/workers/register", {"name": name or platform.node(), **device_info()}).json()[
                "id"
            ]
            break
        except (httpx.TransportError, RuntimeError) as err:
            log.warning("cannot register with %s (%s); retrying", url, err)
            time.sleep(poll_s)
    claim = {"capabilities": capabilities()}
    log.info("worker %s registered at %s (%s)", worker_id, url, claim["capabilities"])
    while True:
        try:
            r = api.post(f"/api/workers/{worker_id}/claim", claim)
        except (httpx.TransportError, RuntimeError) as err:
            log.warning("claim failed (%s)", err)
            time.sleep(poll_s)
            continue
        if r.status_code == 204:
            if once:
                return
            time.sleep(poll_s)
            continue
        claimed = r.json()
        log.info("running job %s (attempt %s)", claimed["job_id"], claimed["attempt"])
        try:
            outcome = run_claimed(api, worker_id, claimed, isolate)
        except Exception as err:  # a worker outlives any one job; the lease hands an unfinished one on
            log.exception("job %s: %s", claimed["job_id"], err)
            outcome = "error"
        log.info("job %s: %s", claimed["job_id"], outcome)
        if once:
            return
