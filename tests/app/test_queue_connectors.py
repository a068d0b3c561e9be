"""The queue's semantics, the same tests on every connector: in memory, SQLite and PostgreSQL.

Time is a fake clock, so leases expire without sleeping. On the SQL connectors each queue call is
its own transaction, as each API request is."""

import datetime as dt
import threading

import pytest

from app.db import Database
from app.main import migrate
from app.queue import Capabilities, InMemoryConnector, JobQueue, LeaseLost, SqlConnector
from contract.results import JobStatus
from tests.app.conftest import postgres_schema_url

LEASE = 60.0
COLUMNS = {"model": "bert-tiny", "device": "cpu", "dtype": "fp32", "submitted_by": "test"}


class Clock:
    def __init__(self):
        self.now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class Queue:
    """A JobQueue whose every call runs in a unit of work of its own (a committed session on SQL)."""

    def __init__(self, clock, connector=None, db=None):
        self.clock, self.connector, self.db = clock, connector, db

    def __getattr__(self, name):
        def call(*args, **kwargs):
            if self.db is None:
                return getattr(JobQueue(self.connector, LEASE, self.clock), name)(*args, **kwargs)
            with self.db.scope() as session:
                return getattr(JobQueue(SqlConnector(session), LEASE, self.clock), name)(*args, **kwargs)

        return call

    def submit(self, job_id, priority=0, max_attempts=3, gpus_needed=0):
        spec = {"model": "bert-tiny", "n": job_id}
        return self.enqueue(
            job_id,
            spec,
            actor="alice",
            priority=priority,
            max_attempts=max_attempts,
            gpus_needed=gpus_needed,
            **COLUMNS,
        )

    def kinds(self, job_id):
        return [e.kind for e in self.events(job_id)]


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def queue(request, tmp_path):
    clock = Clock()
    if request.param == "memory":
        yield Queue(clock, connector=InMemoryConnector())
        return
    if request.param == "sqlite":
        conn, url = None, f"sqlite:///{tmp_path}/queue.db"
    else:
        conn, schema, url = postgres_schema_url()  # skips, saying why, where PostgreSQL is not reachable
    db = Database(url)
    migrate(db)
    yield Queue(clock, db=db)
    db.engine.dispose()
    if conn is not None:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


def test_claims_by_priority_then_submission_order(queue):
    for job_id, priority in (("a", 0), ("b", 5), ("c", 0), ("d", 5)):
        queue.submit(job_id, priority)
    assert [queue.claim("w").id for _ in range(4)] == ["b", "d", "a", "c"]
    assert queue.claim("w") is None


def test_a_claim_leases_the_job_and_counts_the_attempt(queue):
    queue.submit("a")
    job = queue.claim("w1")
    assert (job.id, job.status, job.attempts, job.lease_owner) == ("a", JobStatus.running, 1, "w1")
    assert job.spec == {"model": "bert-tiny", "n": "a"}
    assert job.lease_expires_at == queue.clock() + dt.timedelta(seconds=LEASE)
    assert queue.claim("w2") is None  # nothing is run twice at once
    assert queue.held("a", "w1", 1).status == JobStatus.running
    for worker, attempt in (("w2", 1), ("w1", 2)):
        with pytest.raises(LeaseLost):
            queue.held("a", worker, attempt)
    assert queue.kinds("a") == ["created", "claimed"]


def test_heartbeats_renew_the_lease_and_keep_progress(queue):
    queue.submit("a")
    queue.claim("w")
    queue.clock.advance(50)
    job = queue.heartbeat("a", "w", 1, progress=1.7, message="x" * 500)
    assert job.progress == 1.0 and len(job.progress_message) == 200 and not job.cancel_requested
    queue.clock.advance(50)  # 100 s after the claim, 50 after the heartbeat: still held
    assert queue.claim("other") is None
    assert queue.heartbeat("a", "w", 1, progress=0.5).progress == 0.5
    assert queue.get("a").progress_message == "x" * 200  # a heartbeat without a message keeps the last
    with pytest.raises(LeaseLost):
        queue.heartbeat("a", "someone else", 1)


def test_a_result_ends_the_job_failed_only_when_the_run_reported_errors(queue):
    queue.submit("ok")
    queue.submit("bad")
    queue.claim("w")
    queue.claim("w")
    assert queue.complete("ok", "w", 1, []) == JobStatus.succeeded
    assert queue.complete("bad", "w", 1, ["Traceback\nboom", "second\nmore"]) == JobStatus.failed
    assert queue.get("ok").status == JobStatus.succeeded and queue.get("ok").lease_owner is None
    assert queue.get("bad").error == "Traceback; second"
    assert queue.kinds("ok") == ["created", "claimed", "succeeded"]
    with pytest.raises(LeaseLost):  # posted twice: the job is finished
        queue.complete("ok", "w", 1, [])


def test_retryable_failures_go_back_while_attempts_remain(queue):
    queue.submit("infra", max_attempts=2)
    queue.submit("spec")
    queue.claim("w")
    queue.claim("w")
    assert queue.fail_attempt("infra", "w", 1, "CUDA driver error", retryable=True) == JobStatus.queued
    assert queue.fail_attempt("spec", "w", 1, "bad spec", retryable=False) == JobStatus.failed
    assert queue.get("spec").error == "bad spec"
    again = queue.claim("w")
    assert (again.id, again.attempts) == ("infra", 2)
    # the last attempt: final even though retryable
    assert queue.fail_attempt("infra", "w", 2, "CUDA driver error", retryable=True) == JobStatus.failed
    assert queue.kinds("infra") == ["created", "claimed", "retry", "claimed", "failed"]
    with pytest.raises(LeaseLost):
        queue.fail_attempt("infra", "w", 2, "again", retryable=True)


def test_an_expired_lease_goes_back_then_fails_once_out_of_attempts(queue):
    queue.submit("a", max_attempts=2)
    assert queue.claim("w1").attempts == 1
    queue.clock.advance(LEASE + 1)
    job = queue.claim("w2")
    assert (job.id, job.attempts, job.lease_owner) == ("a", 2, "w2")
    with pytest.raises(LeaseLost):  # the vanished worker comes back: refused
        queue.heartbeat("a", "w1", 1)
    queue.clock.advance(LEASE + 1)
    assert queue.claim("w3") is None
    job = queue.get("a")
    assert job.status == JobStatus.failed and job.error == "worker lost 2 times (max_attempts=2)"
    assert queue.kinds("a") == ["created", "claimed", "lease_expired", "claimed", "lease_expired", "failed"]


def test_reap_alone_returns_what_expired(queue):
    queue.submit("a")
    queue.claim("w")
    assert queue.reap() == []
    queue.clock.advance(LEASE + 1)
    (expired,) = queue.reap()
    assert (expired.id, expired.status, expired.attempts) == ("a", JobStatus.queued, 1)


def test_cancel_ends_a_queued_job_and_asks_a_running_one_to_stop(queue):
    queue.submit("queued")
    queue.submit("running")
    assert queue.claim("w").id == "queued"
    queue.submit("later")
    assert queue.cancel("later", "alice")[0].status == JobStatus.cancelled
    flagged, changed = queue.cancel("queued", "alice")
    assert flagged.cancel_requested and changed  # running: flagged, not ended
    assert queue.cancel("queued", "alice") == (flagged, False)  # asked again: nothing changes, no event
    assert queue.get("queued").status == JobStatus.running
    assert queue.heartbeat("queued", "w", 1).cancel_requested
    assert queue.fail_attempt("queued", "w", 1, "oops", retryable=True) == JobStatus.failed  # no retry once asked
    assert queue.claim("w").id == "running"
    queue.cancel("running", "alice")
    assert queue.stopped("running", "w", 1) == JobStatus.cancelled
    assert queue.cancel("running", "alice") == (queue.get("running"), False)  # a finished job stays as it is
    assert queue.get("running").status == JobStatus.cancelled
    assert queue.cancel("nosuchjob", "alice") == (None, False)
    assert queue.claim("w") is None
    assert queue.kinds("later") == ["created", "cancelled"]
    assert queue.kinds("running") == ["created", "claimed", "cancel_requested", "cancelled"]


def test_concurrent_claims_never_share_a_job(queue):
    ids = {f"j{i:02d}" for i in range(24)}
    for job_id in sorted(ids):
        queue.submit(job_id)
    got, lock = [], threading.Lock()

    def work(worker):
        while (job := queue.claim(worker)) is not None:
            with lock:
                got.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)


def test_a_job_needing_gpus_is_claimed_only_by_a_worker_that_has_them(queue):
    """A cuda job with parallel world_size 2 needs 2 GPUs; cpu and estimate jobs need none."""
    queue.submit("fsdp2", priority=5, gpus_needed=2)
    queue.submit("cpu")
    assert queue.claim("w0", Capabilities(gpus=0)).id == "cpu"  # passes over the first, which it cannot run
    assert queue.claim("w1", Capabilities(gpus=1)) is None
    assert queue.get("fsdp2").status == JobStatus.queued and queue.get("fsdp2").gpus_needed == 2
    job = queue.claim("w2", Capabilities(gpus=2, gpu_memory_bytes=80 * 2**30, cpu_ranks=16))
    assert (job.id, job.lease_owner, job.attempts, job.gpus_needed) == ("fsdp2", "w2", 1, 2)
    (claimed,) = [e for e in queue.events("fsdp2") if e.kind == "claimed"]
    assert claimed.actor == "w2" and claimed.detail == "worker has 2 GPUs of 80.0 GiB, 16 cpu ranks"


def test_a_gpu_worker_takes_cpu_jobs_too_and_the_default_claim_has_no_gpu(queue):
    queue.submit("one-gpu", gpus_needed=1)
    queue.submit("cpu")
    assert queue.claim("plain").id == "cpu"  # no capabilities given: none assumed
    assert queue.claim("plain") is None
    queue.submit("cpu2")
    assert [queue.claim("big", Capabilities(gpus=8)).id for _ in range(2)] == ["one-gpu", "cpu2"]


def test_a_gpu_job_back_from_an_expired_lease_still_needs_its_gpus(queue):
    queue.submit("fsdp4", gpus_needed=4)
    assert queue.claim("w4", Capabilities(gpus=4)).id == "fsdp4"
    queue.clock.advance(LEASE + 1)
    assert queue.claim("w1", Capabilities(gpus=1)) is None  # reaped back to the queue, not handed to it
    assert queue.get("fsdp4").status == JobStatus.queued
    assert queue.claim("w8", Capabilities(gpus=8)).attempts == 2


def test_concurrent_mixed_workers_claim_each_job_once_and_only_what_they_can_run(queue):
    needs = {f"j{i:02d}": 2 if i % 2 else 0 for i in range(24)}
    for job_id, gpus in sorted(needs.items()):
        queue.submit(job_id, gpus_needed=gpus)
    got, lock = [], threading.Lock()

    def work(worker, gpus):
        while (job := queue.claim(worker, Capabilities(gpus=gpus))) is not None:
            with lock:
                got.append((job.id, gpus))

    threads = [threading.Thread(target=work, args=(f"w{i}", 2 * (i % 2))) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(job_id for job_id, _ in got) == sorted(needs)
    assert all(needs[job_id] <= gpus for job_id, gpus in got)
