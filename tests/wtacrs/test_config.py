import dataclasses

import pytest

from wtacrs import WTACRSConfig


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, float("nan"), "0.3", True])
def test_ratio_outside_range(ratio):
    with pytest.raises(ValueError, match="ratio"):
        WTACRSConfig(ratio=ratio)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "random"}, r"method='random' is not allowed; choose one of \['wta', 'crs', 'topk'\]"),
        ({"norm_source": "oracle"}, "norm_source='oracle'"),
        ({"attention": "flash"}, "attention='flash'"),
        ({"min_k": 0}, "min_k=0"),
        ({"norm_source": "example"}, "needs num_examples"),
        ({"target_modules": "query"}, "must be a list of non-empty regex strings"),
        ({"compact_dtype": "int8"}, "compact_dtype='int8'"),
        ({"norm_momentum": 1.0}, "norm_momentum"),
    ],
)
def test_bad_values_name_what_is_allowed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WTACRSConfig(**kwargs)


def test_frozen_and_k_rule():
    cfg = WTACRSConfig(ratio=0.3, min_k=4, target_modules=["a", "b"])
    assert cfg.target_modules == ("a", "b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ratio = 0.5
    assert cfg.num_kept(100) == 30
    assert cfg.num_kept(10) == 4
    assert cfg.num_kept(3) == 3
    assert WTACRSConfig(ratio=1.0).num_kept(7) == 7
    assert WTACRSConfig(method="wta", winners="none").effective_method == "crs"
