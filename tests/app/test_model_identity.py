"""Results group by the model's identity, never by family name alone: two bert configurations are
two models, each compared with its own baseline (issue: a 24-layer bert's full row once became a
4-layer bert's baseline, and lora+wtacrs read 94x less memory than full instead of 3.6x)."""

from tests.app.test_compare import finish, row
from tests.app.test_queue import register

SMALL = {"family": "bert", "overrides": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4}}
DEEP = {"family": "bert", "overrides": {"num_hidden_layers": 24}}


def test_two_configurations_of_one_family_keep_their_own_baselines(client):
    w = register(client)
    methods = {"methods": ["full", "lora+wtacrs@0.3"]}
    small = finish(client, w, [row("full", 2, 360), row("lora+wtacrs@0.3", 2, 100)], spec={"model": SMALL, **methods})
    deep = finish(client, w, [row("full", 2, 9400)], spec={"model": DEEP})  # later, full only
    small_job, deep_job = client.get(f"/api/jobs/{small}").json(), client.get(f"/api/jobs/{deep}").json()
    assert small_job["model"] != deep_job["model"] and small_job["model"].startswith("bert~")
    assert small_job["model_label"] == "bert (hidden 256, 4 layers, 4 heads)"
    assert deep_job["model_label"] == "bert (24 layers)"

    compare = client.get("/api/results/compare", params={"model": small_job["model"]}).json()
    ratios = {c["method"]: c["memory_ratio_to_baseline"] for c in compare}
    assert ratios == {"full": 1.0, "lora+wtacrs@0.3": 3.6}
    assert {c["model_label"] for c in compare} == {small_job["model_label"]}
    assert client.get("/api/results/compare", params={"model": "bert"}).json() == []  # no bare-bert job

    listed = client.get("/api/jobs", params={"model": deep_job["model"]}).json()["items"]
    assert [j["id"] for j in listed] == [deep]
    rows = client.get("/api/results", params={"model": deep_job["model"]}).json()
    assert [(r["job_id"], r["model_label"]) for r in rows] == [(deep, "bert (24 layers)")]


def test_pages_name_the_model_by_its_label_and_select_it_by_key(client):
    w = register(client)
    job_id = finish(client, w, [row("full", 2, 360)], spec={"model": SMALL})
    key = client.get(f"/api/jobs/{job_id}").json()["model"]
    label = "bert (hidden 256, 4 layers, 4 heads)"
    for url in ("/jobs", f"/jobs/{job_id}", f"/compare?model={key}", f"/history?model={key}"):
        assert label in client.get(url).text, url
    assert f'<option value="{key}" selected>{label}</option>' in client.get(f"/compare?model={key}").text
