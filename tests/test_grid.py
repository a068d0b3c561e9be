"""The fast tier keeps one case per family and still meets every setting of a grid."""

from tests.grid import family_grid

FAMILIES = ["t5", "bert", "llama", "gpt2", "opt"]


def _fast(params):
    return [p.values for p in params if not p.marks]


def test_each_family_once_and_every_setting_in_the_fast_tier():
    params = family_grid(FAMILIES, ["fp32", "bf16"], [False, True], ids=[["fp32", "bf16"], ["plain", "lora"]])
    assert len(params) == 5 * 4 and len({p.id for p in params}) == 20
    fast = _fast(params)
    assert sorted(v[0] for v in fast) == sorted(FAMILIES)
    assert {v[1:] for v in fast} == {("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)}
    assert "bert-bf16-lora" in {p.id for p in params}
    assert all(m.name == "slow" for p in params if p.marks for m in p.marks)


def test_fewer_families_than_settings_still_run_each_family_once():
    fast = _fast(family_grid(["bert"], ["cpu", "estimate"]))
    assert fast == [("bert", "cpu")]
