"""Shared setup for the library benchmarks: BERT-base with random weights, synthetic batches."""

from __future__ import annotations

import copy
import datetime
import platform

import torch
import transformers

import wtacrs


def bert_base(seed: int = 0, layers: int = 12):
    torch.manual_seed(seed)
    config = transformers.BertConfig(num_labels=2, num_hidden_layers=layers)
    model = transformers.BertForSequenceClassification(config)
    return model.train()


def batch(model, batch_size: int, seq_len: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=g)
    labels = torch.randint(0, model.config.num_labels, (batch_size,), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def sampler_config(name: str, ratio: float) -> wtacrs.WTACRSConfig:
    """'wtacrs' (the recommended preset), 'layer-only' (the linear layers alone, no companion savers),
    'crs', 'topk'."""
    if name == "wtacrs":
        return wtacrs.WTACRSConfig(ratio=ratio)
    if name == "layer-only":
        return wtacrs.WTACRSConfig(
            ratio=ratio,
            share_inputs=False,
            reuse_saved_inputs=False,
            bit_masks=False,
            attention="unchanged",
            compact_activations=False,
            fused_norms=False,
        )
    return wtacrs.WTACRSConfig(ratio=ratio, method=name)


def variant(model, method: str):
    """'full', 'wtacrs@R' (recommended preset), 'layer-only@R' (no companion savers), 'crs@R', 'topk@R'."""
    m = copy.deepcopy(model)
    if method == "full":
        return m
    name, ratio = method.split("@")
    return wtacrs.apply_wtacrs(m, sampler_config(name, float(ratio)))


def machine() -> str:
    return f"{platform.node()} {platform.machine()} torch {torch.__version__} transformers {transformers.__version__} {datetime.date.today()}"
