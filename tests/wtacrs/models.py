"""Tiny random-weight models of every registered family (wtacrs.families), for tests."""

import functools

import torch
import transformers

from wtacrs.families import FAMILIES, Family


def _build(record: Family):
    config = getattr(transformers, record.config_class)(**record.tiny)
    return getattr(transformers, record.head_class)(config)


TINY = {name: functools.partial(_build, record) for name, record in FAMILIES.items()}


def tiny(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return TINY[family]().train()


def inputs(family: str, batch: int = 3, seq: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq - 4 :] = 0  # some padding, so masks are exercised
    task = FAMILIES[family].task
    if task == "classification":
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (batch,), generator=g)}
    if task == "seq2seq":
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.randint(3, 128, (batch, seq // 2), generator=g),
        }
    return {"input_ids": ids, "attention_mask": mask, "labels": ids}
