"""The front page answers "what fits on my GPU, and what does each method cost" (issue 27): its form
(`/`), the estimate job it submits, and the answer (`/fits/{id}`): the largest batch per method,
and tokens/s only where a GPU measured them."""

from __future__ import annotations

import json
import re
from html import unescape
from html.parser import HTMLParser

from app.models import Job
from app.web import fits
from contract.presets import PRESETS
from contract.results import JobStatus
from contract.spec import JobSpec
from tests.app.conftest import auth

GIB = 2**30
HOSTILE = "<img src=x onerror=alert(1)>"


class Form(HTMLParser):
    """What dash.js reads off the "what fits" form: its data- attributes, the fields' values, the
    presets offered, the ticked methods and the GPU sizes."""

    def __init__(self, html: str):
        super().__init__()
        self.data, self.values, self.options, self.checked, self.unchecked, self.sizes = {}, {}, {}, [], [], []
        self.select, self.selected = None, {}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and a.get("id") == "fits-form":
            self.data = {k[5:]: v for k, v in a.items() if k.startswith("data-")}
        if tag == "select":
            self.select = a.get("id")
            self.options[self.select] = []
        if tag == "option" and self.select:
            self.options[self.select].append(a.get("value"))
            if "selected" in a:
                self.selected[self.select] = a.get("value")
        if tag == "input" and a.get("name") == "fit-method":
            (self.checked if "checked" in a else self.unchecked).append(a["value"])
        elif tag == "input" and a.get("id"):
            self.values[a["id"]] = a.get("value")
        if tag == "button" and "gpu-size" in (a.get("class") or ""):
            self.sizes.append(int(a["data-gb"]))

    def handle_endtag(self, tag):
        if tag == "select":
            self.select = None

    def spec(self, **choices) -> dict:
        """The spec dash.js's fitSpec builds from the form as the server rendered it, with `choices`
        (model, dtype, seq_len, memory) standing for what a visitor picked."""
        dtypes = self.options["fit-dtype"]
        return {
            "model": choices.get("model", self.selected["fit-model"]),
            "methods": choices.get("methods", self.checked),
            "seq_len": int(choices.get("seq_len", self.values["fit-seq-len"])),
            "batch_sizes": [int(b) for b in self.data["batch-sizes"].split(",")],
            "dtype": choices.get("dtype", dtypes[0]),
            "measurements": self.data["measurements"].split(","),
            "device": self.data["device"],
            "target_memory_gb": float(choices.get("memory", self.values["fit-memory"])),
            "max_batch": {"upper": int(self.data["max-batch-upper"])},
        }


def form(client) -> Form:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    return Form(r.text)


def register(client, name="w", gpu=False):
    body = {"name": name, "device_name": "NVIDIA H100 80GB HBM3" if gpu else "cpu"}
    if gpu:
        body["device_memory_bytes"] = 80 * GIB
    r = client.post("/api/workers/register", json=body, headers=auth())
    assert r.status_code == 201, r.text
    return r.json()["id"]


def finish(client, worker, spec, result, device_name="cpu (x86_64)"):
    """Submits `spec`, claims it (nothing else may be queued) and reports `result`."""
    job_id = client.post("/api/jobs", json=spec, headers=auth()).json()["id"]
    claimed = client.post(f"/api/workers/{worker}/claim", headers=auth()).json()
    assert claimed["job_id"] == job_id, claimed
    result = {"environment": {"device_name": device_name}, "errors": [], **result}
    r = client.post(
        f"/api/workers/{worker}/jobs/{job_id}/result",
        json={"attempt": claimed["attempt"], "result": result},
        headers=auth(),
    )
    assert r.status_code == 204, r.text
    return job_id


LARGEST = {"full": 24, "lora": 40, "checkpointing": 96, "wtacrs@0.3": 52, "lora+wtacrs@0.3": 88}


def estimate_result(spec, largest=LARGEST):
    limit = spec["target_memory_gb"] * GIB
    trials = [
        {
            "method": m,
            "batch_size": b,
            "mode": "estimate",
            "measured": False,
            "peak_bytes": int((2 + 60 * b / largest[m]) * GIB),
            "oom": False,
        }
        for m in spec["methods"]
        for b in spec["batch_sizes"]
    ]
    max_batch = [
        {
            "method": m,
            "max_batch_size": largest[m],
            "mode": "estimate",
            "seq_len": spec["seq_len"],
            "limit_bytes": limit,
        }
        for m in spec["methods"]
    ]
    return {"results": trials, "max_batch": max_batch}


def gpu_spec(**change):
    spec = {
        "model": "t5-base",
        "methods": ["full", "lora"],
        "seq_len": 128,
        "batch_sizes": [8, 16],
        "dtype": "fp32",
        "measurements": ["peak_memory", "throughput"],
        "device": "cuda",
    }
    return spec | change


def gpu_result(spec, tokens):
    return {
        "results": [
            {
                "method": m,
                "batch_size": b,
                "mode": "cuda",
                "peak_bytes": b * GIB,
                "tokens_per_s": tokens[m] * b / 16,
                "oom": False,
            }
            for m in spec["methods"]
            for b in spec["batch_sizes"]
        ]
    }


def figures(html: str) -> dict:
    block = re.search(r'<script type="application/json" id="figures">(.*?)</script>', html, re.S).group(1)
    return json.loads(block)


def cells(html: str, table: str) -> list[list[str]]:
    """The text of each row of the table with id `table`, tags dropped."""
    body = re.search(rf'<table id="{table}">(.*?)</table>', html, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    text = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, re.S) for r in rows]
    return [[unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", c))).strip() for c in row] for row in text]


# --- the form ---


def test_the_front_page_is_the_what_fits_form(client):
    page = form(client)
    assert page.data == {
        "device": "estimate",
        "batch-sizes": "1,8",
        "measurements": "peak_memory,max_batch_size",
        "max-batch-upper": "65536",
    }
    assert page.checked == list(fits.METHODS) and page.unchecked == list(fits.MORE_METHODS)
    assert page.sizes == [24, 40, 48, 80, 141] and page.values["fit-memory"] == "80"
    assert page.options["fit-dtype"] == ["fp32", "bf16", "fp16", "bf16-weights"]
    assert set(PRESETS) <= set(page.options["fit-model"]) and "" in page.options["fit-model"]  # "" is custom
    assert page.selected["fit-model"] == "t5-base" and page.values["fit-seq-len"] == "128"
    assert page.options["fit-family"] and "fit-overrides" in page.values and "token" in page.values
    html = client.get("/").text
    assert '<a href="/jobs">Jobs</a>' in html and "None yet" in html  # no answers asked for yet


def test_every_choice_the_form_offers_is_a_spec_the_contract_accepts():
    """Each preset in each dtype at each GPU size, with the default methods: none is refused."""
    for preset in PRESETS:
        for dtype in fits.DTYPES:
            spec = {
                "model": preset,
                "methods": list(fits.METHODS + fits.MORE_METHODS),
                "seq_len": 128,
                "batch_sizes": list(fits.BATCH_SIZES),
                "dtype": dtype,
                "measurements": list(fits.MEASUREMENTS),
                "device": fits.DEVICE,
                "target_memory_gb": float(fits.GPU_SIZES[0]),
                "max_batch": {"upper": fits.MAX_BATCH_UPPER},
            }
            assert JobSpec.model_validate(spec).target_memory_gb == 24


def test_the_spec_the_form_builds_is_queued_and_its_answer_page_follows_it(client):
    page = form(client)
    spec = page.spec(dtype="bf16-weights", memory=40, seq_len=256)
    r = client.post("/api/jobs", json=spec, headers=auth())
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["device"] == "estimate" and job["spec"]["target_memory_gb"] == 40 and job["queue_position"] == 1
    assert job["spec"]["methods"] == list(fits.METHODS) and job["spec"]["batch_sizes"] == [1, 8]
    assert job["spec"]["max_batch"]["upper"] == fits.MAX_BATCH_UPPER  # small models answer, not "4096 or more"
    custom = page.spec(model={"family": "bert", "overrides": {"hidden_size": 256, "num_hidden_layers": 2}})
    second = client.post("/api/jobs", json=custom, headers=auth())
    assert second.status_code == 201 and second.json()["queue_position"] == 2

    answer = client.get(f"/fits/{job['id']}")
    assert answer.status_code == 200
    html = answer.text
    assert "What fits in 40 GiB · t5-base · length 256 · bf16-weights" in html
    assert 'data-status="queued"' in html and "#1 in queue" in html and f'href="/jobs/{job["id"]}"' in html
    assert 'id="fits"' not in html  # no answer before the job has one
    assert figures(html) == {"fits": None}
    recent = cells(client.get("/").text, "recent")
    assert recent[1][:4] == [second.json()["model_label"], "80 GiB", "128", "fp32"]  # the newest first
    assert recent[2][:5] == ["t5-base", "40 GiB", "256", "bf16-weights", "queued"]


def test_a_refused_spec_is_a_422_that_says_why(client):
    page = form(client)
    r = client.post("/api/jobs", json=page.spec(methods=[]), headers=auth())
    assert r.status_code == 422 and "at least 1 item" in r.text
    r = client.post("/api/jobs", json=page.spec(methods=["velora"]), headers=auth())
    assert r.status_code == 422 and "FakeTensorMode" in r.text


def test_old_links_to_the_jobs_list_go_to_jobs(client):
    job_id = client.post("/api/jobs", json=form(client).spec(), headers=auth()).json()["id"]
    r = client.get("/?status=queued&model=t5-base", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/jobs?status=queued&model=t5-base"
    assert job_id in client.get("/?status=queued").text  # followed: the list
    assert job_id not in client.get("/?status=running").text
    assert client.get("/?status=bogus").status_code == 422
    assert client.get("/", follow_redirects=False).status_code == 200  # no list parameter: the form
    assert client.get("/?dtype=", follow_redirects=False).status_code == 307  # a filter form's "any"


# --- the answer ---


def test_a_finished_answer_shows_the_largest_batches_and_no_made_up_speed(client):
    page = form(client)
    spec = page.spec()
    w = register(client)
    job_id = finish(client, w, spec, estimate_result(spec))
    html = client.get(f"/fits/{job_id}").text
    assert "What fits in 80 GiB · t5-base · length 128 · fp32" in html
    table = cells(html, "fits")
    assert table[0][:4] == ["method", "largest batch", "against full", "peak at batch 8"]
    got = {row[0]: row for row in table[1:]}
    assert [row[0] for row in table[1:]] == list(fits.METHODS)
    assert {m: int(row[1]) for m, row in got.items()} == LARGEST
    assert got["lora+wtacrs@0.3"][2] == "3.67x full's batch" and got["full"][2] == ""
    assert got["full"][3] == "22.0 GiB" and got["checkpointing"][3] == "7.00 GiB 3.14x less memory than full"
    assert all(row[4] == fits.NOT_MEASURED for row in table[1:])
    bars = figures(html)["fits"]
    assert bars["data"][0]["y"] == list(LARGEST.values())
    assert bars["layout"]["title"]["text"] == "Largest batch that fits in 80 GiB · length 128 · fp32 (estimated)"
    assert f'href="/jobs/{job_id}"' in html and 'id="queue-position"></span>' in html
    assert f'<a id="fits-link" href="/fits/{job_id}">' in client.get(f"/jobs/{job_id}").text  # and back


def test_tokens_per_s_come_from_gpu_rows_of_the_same_model_length_and_dtype(client):
    gpu = register(client, "gpu", gpu=True)
    finish(client, gpu, gpu_spec(), gpu_result(gpu_spec(), {"full": 3000.0, "lora": 3600.0}), "NVIDIA H100 80GB HBM3")
    # another length and another dtype: not this answer's
    other = gpu_spec(seq_len=512, methods=["full", "checkpointing"])
    finish(client, gpu, other, gpu_result(other, {"full": 1.0, "checkpointing": 1.0}), "NVIDIA H100 80GB HBM3")
    bf16 = gpu_spec(dtype="bf16", methods=["wtacrs@0.3"])
    finish(client, gpu, bf16, gpu_result(bf16, {"wtacrs@0.3": 1.0}), "NVIDIA H100 80GB HBM3")
    spec = form(client).spec()
    job_id = finish(client, register(client), spec, estimate_result(spec))
    got = {row[0]: row for row in cells(client.get(f"/fits/{job_id}").text, "fits")[1:]}
    assert got["full"][4] == "3,000 tokens/s at batch 16, measured on NVIDIA H100 80GB HBM3"
    assert got["lora"][4] == "3,600 tokens/s at batch 16, measured on NVIDIA H100 80GB HBM3 · 1.2x full's tokens/s"
    for method in ("checkpointing", "wtacrs@0.3", "lora+wtacrs@0.3"):
        assert got[method][4] == fits.NOT_MEASURED, method


def test_stored_markup_in_an_answer_stays_text(client):
    spec = form(client).spec()
    job_id = client.post("/api/jobs", json=spec, headers=auth()).json()["id"]
    with client.app.state.db.scope() as s:  # as older stored data would be: no API check runs
        job = s.get(Job, job_id)
        job.outcome = {"max_batch": [{"method": HOSTILE, "max_batch_size": 3, "mode": "estimate"}]}
        job.error, job.status, job.progress = HOSTILE, JobStatus.succeeded, 1.0
    html = client.get(f"/fits/{job_id}").text
    assert HOSTILE not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert figures(html)["fits"]["data"][0]["x"] == ["&lt;img src=x onerror=alert(1)&gt;"]  # Plotly text, escaped


def test_a_job_that_searched_no_batch_says_so(client):
    w = register(client)
    minimal = {"model": "bert-tiny", "methods": ["full"], "seq_len": 64, "batch_sizes": [2], "device": "cpu"}
    job_id = finish(
        client, w, minimal, {"results": [{"method": "full", "batch_size": 2, "mode": "cpu", "peak_bytes": 10}]}
    )
    html = client.get(f"/fits/{job_id}").text
    assert "did not search the largest batch" in html and "no answer: see the job page" in html
    assert client.get("/fits/nosuchjob").status_code == 404
