"""WTA-CRS under Hugging Face gradient checkpointing (non-reentrant) inside an outer saved-tensor hook.

Non-reentrant checkpointing replays each region on its inputs as autograd unpacks them. Under an
outer `saved_tensors_hooks` (the profiler counts saved activations that way) that is a fresh
tensor object, so whatever the region decides from marks on its input object must not differ
between the forward and the replay, or the checkpoint sees a different number of saved tensors.
"""

import copy

import pytest
import torch
import transformers

import wtacrs
from tests.wtacrs.models import TINY, inputs
from wtacrs.families import FAMILIES


def _tiny_without_dropout(family: str, seed: int = 0):
    """The family's tiny model with every dropout probability 0, in train mode (HF checkpoints only
    in training), so a patched and an unpatched model compute the same function."""
    record = FAMILIES[family]
    config = getattr(transformers, record.config_class)(**record.tiny)
    for name, value in list(vars(config).items()):
        if ("dropout" in name or "pdrop" in name) and isinstance(value, float):
            setattr(config, name, 0.0)
    torch.manual_seed(seed)
    model = getattr(transformers, record.head_class)(config).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _grads_under_outer_hooks(model, batch):
    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", sorted(TINY))
def test_checkpointed_forward_under_outer_saved_tensor_hooks(family):
    batch = inputs(family)

    # The preset at a ratio that samples: backward must not hit a CheckpointError.
    sampled = wtacrs.apply_wtacrs(_tiny_without_dropout(family), wtacrs.WTACRSConfig(ratio=0.3))
    grads = _grads_under_outer_hooks(sampled, batch)
    assert grads and all(torch.isfinite(g).all() for g in grads.values())

    # At ratio 1.0 the preset matches the unpatched checkpointed model (compact GELU/SiLU storage
    # is fp16: ~1e-4 relative, as in test_patch).
    ref = _tiny_without_dropout(family)
    exact = wtacrs.apply_wtacrs(copy.deepcopy(ref), wtacrs.WTACRSConfig(ratio=1.0))
    g_ref, g = _grads_under_outer_hooks(ref, batch), _grads_under_outer_hooks(exact, batch)
    assert g_ref.keys() == g.keys()
    scale = torch.sqrt(sum((t.double() ** 2).sum() for t in g_ref.values())).item()
    err = max(((g[n] - t).norm() / (t.norm() + 1e-4 * scale)).item() for n, t in g_ref.items())
    assert err < 1e-3, err
