"""Migrations 0003 (multi-GPU placement) and 0004 (compiled rows) on a store that already holds
jobs and rows, on SQLite and PostgreSQL: existing cuda jobs get the GPUs their spec needs, stored
rows the strategy and world_size they ran with and whether they ran compiled; each downgrades and
upgrades again; and the models match the migrations."""

import datetime as dt

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from app.db import Database
from app.main import ROOT
from app.models import Base

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
JOBS = sa.table(
    "jobs",
    *(sa.column(c) for c in ("id", "status", "model", "device", "dtype", "priority", "attempts", "max_attempts")),
    *(sa.column(c) for c in ("cancel_requested", "progress", "submitted_by")),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("spec", sa.JSON),
)
RESULTS = sa.table(
    "results",
    *(sa.column(c) for c in ("job_id", "model", "method", "batch_size", "mode", "dtype", "oom")),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("data", sa.JSON),
)


def alembic(db: Database, action, revision: str) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "app" / "migrations"))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        action(cfg, revision)


def job(job_id: str, device: str, parallel: dict | None = None) -> dict:
    spec = {"model": "bert-tiny", "device": device, **({"parallel": parallel} if parallel else {})}
    return dict(
        id=job_id,
        status="queued",
        model="bert-tiny",
        device=device,
        dtype="fp32",
        priority=0,
        attempts=0,
        max_attempts=3,
        cancel_requested=False,
        progress=0.0,
        submitted_by="old",
        created_at=NOW,
        spec=spec,
    )


def row(job_id: str, method: str, **data) -> dict:
    base = dict(job_id=job_id, model="bert-tiny", method=method, batch_size=2, mode="cpu", dtype="fp32", oom=False)
    return base | dict(created_at=NOW, data={"method": method, "batch_size": 2, "mode": "cpu", **data})


def test_0003_migrates_stored_jobs_and_rows_and_round_trips(database_url):
    db = Database(database_url)
    alembic(db, command.upgrade, "0002")
    with db.engine.begin() as conn:
        conn.execute(
            sa.insert(JOBS),
            [
                job("fsdp4", "cuda", {"strategy": "fsdp", "world_size": 4}),
                job("one", "cuda"),
                job("none1", "cuda", {"strategy": "none", "world_size": 1}),
                job("gloo", "cpu", {"strategy": "ddp", "world_size": 2}),
                job("est", "estimate", {"strategy": "fsdp", "world_size": 64}),
            ],
        )
        conn.execute(
            sa.insert(RESULTS),
            [row("gloo", "full", strategy="ddp", world_size=2, rank=None), row("one", "full"), row("est", "lora")],
        )
    alembic(db, command.upgrade, "head")
    with db.engine.connect() as conn:
        needed = dict(conn.execute(sa.text("SELECT id, gpus_needed FROM jobs")).all())
        series = conn.execute(sa.text("SELECT job_id, strategy, world_size FROM results ORDER BY id")).all()
    assert needed == {"fsdp4": 4, "one": 1, "none1": 1, "gloo": 0, "est": 0}
    assert [tuple(r) for r in series] == [("gloo", "ddp", 2), ("one", "none", 1), ("est", "none", 1)]

    alembic(db, command.downgrade, "0002")
    alembic(db, command.upgrade, "head")
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM results")).scalar_one() == 3
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    sqlite = db.engine.dialect.name == "sqlite"
    db.engine.dispose()
    changes = [c for d in diff for c in (d if isinstance(d, list) else [d])]  # column changes come in lists

    def known(change) -> bool:
        # server defaults are the migrations' own; SQLite keeps dtype's old width on purpose (0002)
        return change[0] == "modify_default" or (sqlite and change[0] == "modify_type" and change[3] == "dtype")

    assert [c for c in changes if not known(c)] == []


def test_0004_backfills_compiled_from_the_stored_rows_and_round_trips(database_url):
    db = Database(database_url)
    alembic(db, command.upgrade, "0003")
    with db.engine.begin() as conn:
        conn.execute(sa.insert(JOBS), [job("compiled", "cpu"), job("eager", "cpu"), job("old", "cpu")])
        conn.execute(
            sa.insert(RESULTS),
            [
                row("compiled", "full", compiled=True, compile_backend="inductor"),
                row("compiled", "wtacrs@0.3", compiled=True, compile_backend="inductor"),
                row("eager", "full", compiled=False),
                row("old", "full"),  # from before compile: the row does not say
            ],
        )
    read = sa.select(sa.column("job_id"), sa.column("method"), sa.column("compiled", sa.Boolean))
    read = read.select_from(sa.table("results")).order_by(sa.column("id"))

    alembic(db, command.upgrade, "0004")
    with db.engine.connect() as conn:
        backfilled = [tuple(r) for r in conn.execute(read)]
    expected = [
        ("compiled", "full", True),
        ("compiled", "wtacrs@0.3", True),
        ("eager", "full", False),
        ("old", "full", False),
    ]
    assert backfilled == expected

    alembic(db, command.downgrade, "0003")
    with db.engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("results")}
        assert "compiled" not in columns and {"strategy", "world_size"} <= columns
        assert conn.execute(sa.text("SELECT count(*) FROM results")).scalar_one() == 4
    alembic(db, command.upgrade, "head")
    with db.engine.begin() as conn:
        assert [tuple(r) for r in conn.execute(read)] == expected
        # a row written without the column (an insert that predates it) reads as eager
        conn.execute(sa.insert(RESULTS), [row("eager", "lora")])
        assert conn.execute(read).all()[-1][2] is False
    db.engine.dispose()


def test_0005_keys_stored_jobs_and_rows_by_model_identity_and_round_trips(database_url):
    small = {"family": "bert", "overrides": {"hidden_size": 256, "num_hidden_layers": 4}}
    deep = {"family": "bert", "overrides": {"num_hidden_layers": 24}}
    db = Database(database_url)
    alembic(db, command.upgrade, "0004")
    with db.engine.begin() as conn:
        stored = [job("small", "cpu"), job("deep", "cpu"), job("bare", "cpu"), job("preset", "cpu")]
        for j, model in zip(stored, (small, deep, {"family": "bert"}, "bert-tiny")):
            j.update(model=model if isinstance(model, str) else "bert", spec={**j["spec"], "model": model})
        conn.execute(sa.insert(JOBS), stored)
        conn.execute(
            sa.insert(RESULTS), [row("small", "full") | {"model": "bert"}, row("deep", "full") | {"model": "bert"}]
        )
    jobs = sa.select(sa.column("id"), sa.column("model"), sa.column("model_label")).select_from(sa.table("jobs"))
    rows = sa.select(sa.column("job_id"), sa.column("model"), sa.column("model_label")).select_from(sa.table("results"))

    alembic(db, command.upgrade, "0005")
    with db.engine.connect() as conn:
        got = {r[0]: (r[1], r[2]) for r in conn.execute(jobs)}
        got_rows = {r[0]: (r[1], r[2]) for r in conn.execute(rows)}
    assert got["small"][1] == "bert (hidden 256, 4 layers)" and got["deep"][1] == "bert (24 layers)"
    assert got["small"][0] != got["deep"][0] and got["small"][0].startswith("bert~")
    assert got["bare"] == ("bert", "bert") and got["preset"] == ("bert-tiny", "bert-tiny")
    assert got_rows == {"small": got["small"], "deep": got["deep"]}  # rows follow their job

    alembic(db, command.downgrade, "0004")
    with db.engine.connect() as conn:
        assert {r[0]: r[1] for r in conn.execute(jobs.with_only_columns(sa.column("id"), sa.column("model")))} == {
            "small": "bert",
            "deep": "bert",
            "bare": "bert",
            "preset": "bert-tiny",
        }
        assert "model_label" not in {c["name"] for c in sa.inspect(conn).get_columns("results")}
    alembic(db, command.upgrade, "head")
    with db.engine.connect() as conn:
        assert {r[0]: (r[1], r[2]) for r in conn.execute(jobs)} == got
    db.engine.dispose()
