""" "What fits on my GPU, and what does each method cost": the site's front page (`/`), a form that
submits an estimate job, and its answer (`/fits/{id}`): the largest batch per method in the
memory asked for, and tokens/s where a GPU has measured the same model, length and dtype.

The answer's throughput is never estimated: an estimate traces the step without running it, so
it has no time. A method no GPU has run says so."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.api.deps import Reader, SessionDep
from app.models import ResultRow
from app.schemas import JobPublic
from app.services import jobs as job_service
from app.services import results
from app.web.batch_charts import batch_label, batch_words, full_batch, max_batch_bars, target_text
from app.web.charts import memory_ratio_words, memory_text, share_words
from app.web.pages import GIB, page
from app.web.parallel_charts import parallel_label
from contract.presets import FAMILIES, PRESETS
from contract.results import JobStatus
from contract.rows import MaxBatchRow

router = APIRouter(include_in_schema=False)
# what the form submits besides the visitor's choices (rendered into the form's data- attributes,
# which dash.js reads: the page and its tests share these)
DEVICE = "estimate"
MEASUREMENTS = ("peak_memory", "max_batch_size")
BATCH_SIZES = (1, 8)  # a small sweep: the peak at batch 8 compares the methods' memory
# the search's bound: the spec's default (4096) left a small model at 80 GB as "4096 or more" for
# most methods; each doubling past it costs one more trace (an estimate's trace costs about the same
# at any batch), so answer up to 65536
MAX_BATCH_UPPER = 65536
METHODS = ("full", "lora", "checkpointing", "wtacrs@0.3", "lora+wtacrs@0.3")  # ticked
MORE_METHODS = ("wtacrs@0.1", "lora+wtacrs@0.1", "lora+checkpointing", "wtacrs@0.3+checkpointing")  # offered
GPU_SIZES = (24, 40, 48, 80, 141)  # GB: RTX 4090 / L4, A100 40GB, A6000 / L40S, A100 / H100 80GB, H200
DEFAULT_GPU = 80
DEFAULT_MODEL = "t5-base"
DEFAULT_SEQ_LEN = 128
DTYPES = {
    "fp32": "fp32",
    "bf16": "bf16 (autocast, fp32 weights)",
    "fp16": "fp16 (autocast, fp32 weights)",
    "bf16-weights": "bf16-weights (bf16 weights, gradients and optimizer state)",
}
RECENT = 10
# /?status=... was the jobs list: a link to it with any of its parameters goes there still
JOBS_LIST_QUERY = frozenset({"status", "model", "device", "dtype", "page", "per_page"})
NOT_MEASURED = "not measured on a GPU yet"
BEFORE = frozenset({JobStatus.queued, JobStatus.running})


def presets_by_family() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for preset, (family, _) in PRESETS.items():
        out.setdefault(family, []).append(preset)
    return out


@router.get("/", response_class=HTMLResponse)
def fits_page(request: Request, session: SessionDep, _: Reader) -> Response:
    if JOBS_LIST_QUERY & request.query_params.keys():
        return RedirectResponse("/jobs?" + request.url.query, status_code=307)
    return page(
        request,
        "fits.html",
        presets=presets_by_family(),
        families=sorted(FAMILIES),
        default_model=DEFAULT_MODEL,
        seq_len=DEFAULT_SEQ_LEN,
        dtypes=DTYPES,
        gpu_sizes=GPU_SIZES,
        default_gpu=DEFAULT_GPU,
        methods=METHODS,
        more_methods=MORE_METHODS,
        device=DEVICE,
        batch_sizes=",".join(map(str, BATCH_SIZES)),
        measurements=",".join(MEASUREMENTS),
        max_batch_upper=MAX_BATCH_UPPER,
        recent=job_service.recent_estimates(session, RECENT),
        target_text=lambda gb: target_text(gb * GIB),
    )


def _peaks(job: JobPublic) -> tuple[int | None, dict[str, int]]:
    """The largest batch of the sweep every method fits at, and each method's peak there."""
    fit: dict[str, dict[int, int]] = {}
    for r in job.results:
        if r.fits:
            fit.setdefault(r.method, {})[r.batch_size] = r.peak_bytes
    common = set.intersection(*(set(b) for b in fit.values())) if fit else set()
    batch = max(common, default=None)
    return batch, {m: sizes[batch] for m, sizes in fit.items()} if batch else {}


def _batch_text(row: MaxBatchRow | None) -> str:
    if row is None:
        return "no answer: see the job page"
    if row.max_batch_size == 0:
        return "0: batch 1 does not fit"
    return f"{batch_label(row)} (the search's limit)" if row.capped_at_upper else batch_label(row)


def _speed(method: str, gpu: dict[str, ResultRow]) -> dict:
    row = gpu.get(method)
    if row is None:
        return {"speed": NOT_MEASURED, "speed_note": "", "speed_job": None}
    full = gpu.get("full")
    same = (
        full is not None
        and method != "full"
        and (full.batch_size, full.device_name) == (row.batch_size, row.device_name)
    )
    words = share_words(row.tokens_per_s / full.tokens_per_s, "full", "tokens/s") if same and full.tokens_per_s else ""
    note = f"at batch {row.batch_size}, measured on {row.device_name or 'a GPU'}" + (f" · {words}" if words else "")
    return {"speed": f"{row.tokens_per_s:,.0f} tokens/s", "speed_note": note, "speed_job": row.job_id}


def answer_rows(job: JobPublic, gpu: dict[str, ResultRow]) -> tuple[int | None, list[dict]]:
    """One row per method, in the spec's order: the largest batch and its ratio to full's, the
    estimated peak at the sweep's batch and its ratio, and the GPU-measured tokens/s (or that there
    is none). Also the sweep's batch the peaks are at."""
    by_method = {m.method: m for m in job.max_batch}
    asked = [m for m in job.spec.get("methods") or [] if isinstance(m, str)]
    methods = list(dict.fromkeys([*asked, *by_method]))
    base = full_batch(job.max_batch)
    batch, peaks = _peaks(job)
    rows = []
    for method in methods:
        row = by_method.get(method)
        peak = peaks.get(method)
        ratio = peaks["full"] / peak if peak and peaks.get("full") and method != "full" else None
        rows.append(
            {
                "method": method,
                "batch": _batch_text(row),
                "words": batch_words(row, base) if row else "",
                "peak": memory_text(peak) if peak else "",
                "peak_words": memory_ratio_words(ratio, "full") if ratio else "",
                **_speed(method, gpu),
            }
        )
    return batch, rows


@router.get("/fits/{job_id}", response_class=HTMLResponse)
def fits_answer(request: Request, job_id: str, session: SessionDep, _: Reader) -> HTMLResponse:
    job = job_service.public(session, job_service.get_or_404(session, job_id))
    spec = job.spec
    target = spec.get("target_memory_gb")
    limit = next((m.limit_bytes for m in job.max_batch if m.limit_bytes), None) or (target * GIB if target else None)
    seq_len = spec.get("seq_len") if isinstance(spec.get("seq_len"), int) else None
    parallel = parallel_label(spec)
    gpu = results.gpu_throughput(session, job.model, job.dtype, seq_len) if seq_len else {}
    batch, rows = answer_rows(job, gpu)
    mode = job.max_batch[0].mode if job.max_batch else None
    figure = max_batch_bars(job.max_batch, parallel, limit, seq_len, job.dtype, mode) if job.max_batch else None
    where = [f"in {target_text(limit)}" if limit else None, job.model_label or job.model, parallel]
    where += [f"length {seq_len}" if seq_len else None, job.dtype]
    return page(
        request,
        "fit_answer.html",
        job=job,
        heading="What fits " + " · ".join(w for w in where if w),
        waiting=job.status in BEFORE,
        searched="max_batch_size" in spec.get("measurements", []),
        rows=rows,
        peak_batch=batch,
        figures={"fits": figure},
        estimated_for=spec.get("estimate_device") if job.device == "estimate" else None,
    )
