"""Issue 28's methods in the grammar and the profiler: MEFT (meft1/2/3), activation offloading,
selective activation checkpointing, on cpu and in the estimate."""

import pytest
import torch

from contract.methods import EXAMPLES, parse_method
from contract.spec import JobSpec
from profiler.runner import run_job
from profiler.trial.methods import apply_method
from tests.wtacrs.models import inputs, tiny

BASE = {"seq_len": 32, "steps": 1, "warmup": 0, "measurements": ["peak_memory"], "batch_sizes": [4]}
NEW = ["meft1", "meft2", "meft3", "offload", "lora+offload", "selective-checkpointing", "lora+selective-checkpointing"]


def job(**kw):
    return run_job(JobSpec.model_validate({**BASE, **kw}), isolate=False).model_dump(mode="json")


def test_grammar():
    m = parse_method("MEFT3@beta=0.05, r=16")
    assert (m.name, m.meft, m.meft_r, m.meft_beta, m.meft_lambda) == ("meft3@r=16,beta=0.05", "meft3", 16, 0.05, None)
    assert parse_method("lora+offload").offload and parse_method("lora+offload").adapter == "lora"
    sac = parse_method("wtacrs@0.3+selective-checkpointing")
    assert sac.selective_checkpointing and sac.sampler == "wtacrs" and not sac.checkpointing
    assert "exact" in parse_method("meft1").exactness and parse_method("topk@0.1").exactness == "biased estimate"
    for bad, why in [
        ("meft1+lora", "stands alone"),
        ("meft1@r=0", "outside"),
        ("meft2@lambda=-1", "outside"),
        ("meft1@alpha=1", "not one of"),
        ("meft1@r=8,r=9", "twice"),
        ("checkpointing+selective-checkpointing", "exclude"),
        ("offload+checkpointing", "not combined"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_method(bad)
    assert set(NEW) <= {parse_method(e).name for e in EXAMPLES} | set(NEW)
    assert JobSpec.model_validate({**BASE, "model": "bert-tiny", "device": "cpu", "methods": NEW}).methods == NEW


def test_estimate_of_every_new_method_and_meft_keeps_under_a_third():
    result = job(model="bert-tiny", methods=["full", *NEW], device="estimate")
    assert result["status"] == "succeeded", result["errors"]
    rows = {r["method"]: r for r in result["results"]}
    full = rows["full"]["activation_bytes"]
    for m in ("meft1", "meft2", "meft3"):
        assert rows[m]["activation_bytes"] < 0.3 * full
    # offloading: nothing saved stays on the (estimated CUDA) device
    assert rows["offload"]["activation_bytes"] < 0.1 * full
    assert rows["offload"]["first_step_peak_bytes"] <= rows["full"]["first_step_peak_bytes"]
    # selective checkpointing keeps the matmul outputs: between checkpointing and full
    sac = rows["selective-checkpointing"]["activation_bytes"]
    assert 0 < sac < full


@pytest.mark.parametrize("family", ["roberta", "opt", "llama"])
def test_meft_on_other_families_in_the_estimate(family):
    from wtacrs.families import FAMILIES

    model = {"family": family, "overrides": dict(FAMILIES[family].tiny)}
    result = job(model=model, methods=["full", "meft1", "meft3"], device="estimate")
    assert result["status"] == "succeeded", result["errors"]
    full, *mefts = result["results"]
    assert all(r["activation_bytes"] < full["activation_bytes"] for r in mefts)


def test_cpu_rows_and_what_offloading_means_there():
    result = job(
        model="bert-tiny", methods=["full", "offload", "meft1", "wtacrs@0.3+selective-checkpointing"], device="cpu"
    )
    assert result["status"] == "succeeded", result["errors"]
    rows = {r["method"]: r for r in result["results"]}
    # on the CPU the saved tensors are already in host memory: offloading moves nothing
    assert rows["offload"]["activation_bytes"] == rows["full"]["activation_bytes"]
    assert rows["meft1"]["activation_bytes"] < 0.3 * rows["full"]["activation_bytes"]


def test_meft_with_an_unsupported_family_is_refused_with_a_reason():
    # at submission (a 422 from the API), before any worker builds the model
    with pytest.raises(ValueError, match="MEFT.*support the families"):
        job(model="t5-tiny", methods=["meft1"], device="estimate")


@pytest.mark.parametrize("method", ["offload", "selective-checkpointing", "lora+selective-checkpointing"])
def test_exact_methods_give_the_gradients_of_their_base(method):
    base = "lora" if method.startswith("lora") else "full"
    grads = []
    for name in (base, method):
        model = apply_method(tiny("bert"), "bert", parse_method(name))
        torch.manual_seed(0)
        model(**inputs("bert")).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-5, atol=1e-6, msg=n)


def test_specs_refuse_what_cannot_run_with_the_reason():
    minimal = {**BASE, "methods": ["full"], "device": "cpu"}
    for model in ("t5-base", {"family": "gpt2"}):
        with pytest.raises(ValueError, match="MEFT.*support the families.*T5's first layer"):
            JobSpec.model_validate({**minimal, "model": model, "methods": ["full", "meft1"]})
    JobSpec.model_validate({**minimal, "model": "bert-tiny", "methods": ["meft1"]})  # a MEFT family
    sampled = ["wtacrs@0.3+selective-checkpointing"]
    with pytest.raises(ValueError, match="do not trace yet"):
        JobSpec.model_validate({**minimal, "model": "bert-tiny", "device": "estimate", "methods": sampled})
    JobSpec.model_validate({**minimal, "model": "bert-tiny", "methods": sampled})  # cpu runs it


def test_the_contract_names_the_families_the_library_supports():
    from contract.methods import MEFT_FAMILIES
    from wtacrs.meft_blocks import FAMILIES

    assert sorted(MEFT_FAMILIES) == sorted(FAMILIES)


def test_meft_fidelity_is_its_reconstruction_error_against_backprop_through_the_same_model():
    from contract.rows import FidelityRow

    result = job(model="bert-tiny", methods=["meft1"], device="cpu", measurements=["fidelity"])
    assert result["status"] == "succeeded", result["errors"]
    rows = result["fidelity"]
    assert rows and {r["method"] for r in rows} == {"meft1"}
    names = {r["layer"] for r in rows}
    assert any(".meft_" in n for n in names)  # the adapters
    assert any(".meft_" not in n for n in names)  # and the head
    for r in rows:
        FidelityRow.model_validate(r)  # what the API would accept
        assert r["draws"] == 1
        # a zero exact gradient (the adapters' down-projections, behind up-projections that start
        # at zero) has no relative error: None, not 0
        assert (r["relative_error"] is None) == (r["relative_variance"] is None) == (not r["exact_norm"])
        if r["relative_error"] is not None:
            assert r["relative_variance"] == 0.0  # one deterministic draw
            # fp32 on 2 layers: the reconstruction x1 = (y1 - F(x2))/lambda amplifies rounding by
            # 1/lambda = 10 per layer, about 1e-7 * 10^2 relative; 1e-3 leaves room
            assert r["relative_error"] < 1e-3, r
    # the reference is a different computation: the reconstructed first layer is off by rounding
    # (the top layer and the head read the saved top streams, exact), so not every error is 0
    assert max(r["relative_error"] or 0 for r in rows) > 0


def test_offload_rows_say_how_much_the_host_keeps():
    est = {
        r["method"]: r for r in job(model="bert-tiny", methods=["lora", "lora+offload"], device="estimate")["results"]
    }
    cpu = {r["method"]: r for r in job(model="bert-tiny", methods=["lora", "lora+offload"], device="cpu")["results"]}
    for rows in (est, cpu):
        assert rows["lora"]["host_bytes"] is None  # does not offload
    # estimate: nothing saved stays on the device, the host holds it instead: about what lora alone
    # saves for backward. Not equal: activation_bytes counts storages (once each), the offloader copies
    # each saved tensor (two views of one storage are two copies; 1.09x on bert-tiny)
    host = est["lora+offload"]["host_bytes"]
    assert est["lora+offload"]["activation_bytes"] == 0
    assert 0.5 * est["lora"]["activation_bytes"] <= host <= 2 * est["lora"]["activation_bytes"]
    # cpu: nothing moves, the saved tensors are host memory already and count as activations
    assert cpu["lora+offload"]["host_bytes"] == 0
    assert cpu["lora+offload"]["activation_bytes"] == cpu["lora"]["activation_bytes"]


@pytest.mark.slow
def test_the_frontier_chart_of_one_job_shows_every_method():
    """Issue 28's bar: one cpu job with the old and the new methods, its memory-vs-throughput chart
    (the job page's `frontier`) has a series for each."""
    from app.web.job_charts import frontier

    methods = ["full", "lora", "checkpointing", "wtacrs@0.3", "lora+wtacrs@0.3", *NEW]
    spec = {
        **BASE,
        "model": "bert-tiny",
        "device": "cpu",
        "methods": methods,
        "measurements": ["peak_memory", "throughput"],
    }
    result = run_job(JobSpec.model_validate(spec), isolate=False)
    assert not result.errors, result.errors
    figure = frontier(result.results)
    assert {t["name"] for t in figure["data"]} == {*methods, "frontier"}
