"""CUDA's autocast rules on fake CPU tensors: the lists are ATen's, the casts are CUDA's."""

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from profiler.instruments.cuda_autocast import _weight_casts, cuda_autocast, policies


def _wrapped(key: str) -> set[str]:
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("aten::")]
    return {n[len("aten::") :] for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(n, key)}


def test_the_lists_are_the_installed_torchs():
    # the dispatcher knows which ops CUDA's autocast wraps (not how): ours are exactly those, each
    # with a policy from ATen's lists (torch 2.11's Dimname overloads take their base op's)
    table = policies()
    assert set(table) == _wrapped("AutocastCUDA")
    assert not [op for op, policy in table.items() if policy == "unknown"]
    for op, policy in {"mm": "lower", "softmax.int": "set_opt_dtype", "layer_norm": "fp32", "rms_norm": "fp32",
                       "norm.Scalar": "append_dtype", "addcmul": "promote", "binary_cross_entropy": "banned",
                       "softmax.Dimname": "set_opt_dtype", "sum.dim_DimnameList": "set_opt_dtype"}.items():  # fmt: skip
        assert table.get(op, policy) == policy, op  # where the installed torch wraps it


def test_the_policies_follow_the_running_torchs_op_set(monkeypatch):
    """A torch whose CUDA autocast lacks an op (2.11: rms_norm) or wraps another overload
    (2.11: softmax.Dimname, norm.names_ScalarOpt_dim) gets exactly its own set."""
    import profiler.instruments.cuda_autocast as ca

    real = ca._wrapped

    def older(key):
        names = real(key)
        if key != "AutocastCUDA":
            return names
        return [n for n in names if n != "rms_norm"] + ["softmax.Dimname", "norm.names_ScalarOpt_dim", "novel_op"]

    monkeypatch.setattr(ca, "_wrapped", older)
    table = policies()
    assert "rms_norm" not in table
    assert table["softmax.Dimname"] == "set_opt_dtype" and table["norm.names_ScalarOpt_dim"] == "append_dtype"
    assert table["novel_op"] == "unknown"


def _dtypes():
    x = torch.empty(4, 8, requires_grad=True)
    w = torch.empty(8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = x @ w
        return {
            "matmul": h.dtype,
            "softmax": torch.softmax(h, -1).dtype,
            "layer_norm": F.layer_norm(h, (8,)).dtype,
            "pow": h.pow(2).dtype,
            "cross_entropy": F.cross_entropy(h, torch.zeros(4, dtype=torch.long)).dtype,
        }


def test_casts_follow_cuda_and_are_undone():
    with FakeTensorMode():
        cpu = _dtypes()
        with cuda_autocast():
            cuda = _dtypes()
        again = _dtypes()
    bf16, fp32 = torch.bfloat16, torch.float32
    assert cuda == {"matmul": bf16, "softmax": fp32, "layer_norm": fp32, "pow": fp32, "cross_entropy": fp32}
    assert cpu["softmax"] == cpu["layer_norm"] == bf16  # the CPU's lists keep these low
    assert again == cpu


def test_a_weight_is_cast_once_per_region():
    with FakeTensorMode(), cuda_autocast():
        w = torch.empty(8, 8, requires_grad=True)
        x = torch.empty(2, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            F.linear(x, w)
            F.linear(x, w)
            assert len(_weight_casts) == 1  # one copy, held for the region as ATen's cache holds it
        assert not _weight_casts
