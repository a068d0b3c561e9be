"""The `convergence` measurement: fine-tune real pretrained weights on real data with one method.

Every method of a job starts from the same weights (the classifier head seeded), sees the same
batches in the same order and trains for the same number of steps, so the loss curves and the
held-out accuracy differ only by the method. The batch's dataset indices are passed to the
layers (`wtacrs.example_ids`), so norm_source='example' fills the paper's per-example cache
across epochs; its size is reported.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable

import torch

import wtacrs
from contract.methods import Method
from contract.rows import ConvergenceRow
from contract.spec import JobSpec

from ..instruments.cpu_allocator import CPUAllocatorRecord
from ..trial.build import autocast, make_optimizer
from ..trial.methods import apply_method
from ..trial.textdata import Encoded, default_sst2_path, read_tsv, split
from ..trial.zoo import load_pretrained

PEAK_STEPS = 2  # CPU: the allocator record spans this many steps (the second has optimizer state)


def _schedule(optimizer, total_steps: int, warmup_fraction: float):
    warmup = max(1, round(total_steps * warmup_fraction)) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = t.untyped_storage()._cdata  # one count per storage, as wtacrs.memory keys them
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


@torch.no_grad()
def evaluate(model, data: Encoded, batch_size: int, amp) -> tuple[float, float | None]:
    """(accuracy, mean loss) on `data`, dropout off; the loss None where it is not finite (an fp16
    overflow), since a result carries finite numbers only."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(data), batch_size):
        ids = torch.arange(start, min(start + batch_size, len(data)), device=data.labels.device)
        batch = data.batch(ids)
        with amp():
            out = model(**batch)
        correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
        loss_sum += float(out.loss) * len(ids)
    model.train()
    mean = loss_sum / len(data)
    return correct / len(data), mean if math.isfinite(mean) else None


def convergence_row(spec: JobSpec, method: Method, device: torch.device, tick: Callable[[str], None]) -> ConvergenceRow:
    conf = spec.convergence
    path = conf.data or str(default_sst2_path())
    sentences, labels = read_tsv(path)
    parts = split(labels, conf.val_examples, conf.train_examples, conf.split_seed)
    steps_per_epoch = len(parts.train_ids) // conf.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"convergence.batch_size={conf.batch_size} exceeds the {len(parts.train_ids)} training examples; lower it"
        )
    cuda = device.type == "cuda"
    torch.manual_seed(spec.seed)  # the new classifier head, dropout and sampling draws
    family, model, tokenizer = load_pretrained(spec.model, parts.num_labels)
    model = model.to(device)
    options = {}
    if method.sampler:
        options["norm_source"] = conf.norm_source
        if conf.norm_source == "example":
            options["num_examples"] = len(parts.train_ids)
    model = apply_method(model, family, method, spec.lora_r, **options)
    train = Encoded(tokenizer, sentences, labels, parts.train_ids, spec.seq_len, device)
    val = Encoded(tokenizer, sentences, labels, parts.val_ids, spec.seq_len, device)
    # What is live before training (weights, the tokenised data), counted from the tensors; the
    # allocator then measures everything training adds. Loading transients are not training's.
    resident = _tensor_bytes([*model.parameters(), *model.buffers(), *train.tensors(), *val.tensors()])
    record = CPUAllocatorRecord() if device.type == "cpu" else contextlib.nullcontext()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    record.__enter__()
    recording = True
    try:
        lr = conf.adapter_lr if method.adapter or method.meft else spec.lr  # MEFT trains adapters too
        optimizer = make_optimizer(spec.model_copy(update={"lr": lr}), model)
        if spec.optimizer.startswith("adamw"):  # every AdamW implementation decays the same way
            for group in optimizer.param_groups:
                group["weight_decay"] = conf.weight_decay
        scheduler = _schedule(optimizer, steps_per_epoch * conf.epochs, conf.warmup_fraction)

        def amp():
            return autocast(device.type, spec.dtype)

        losses, evals, train_time, step = [], [], 0.0, 0
        order_gen = torch.Generator().manual_seed(spec.seed)
        for epoch in range(1, conf.epochs + 1):
            order = torch.randperm(len(train), generator=order_gen)
            for b in range(steps_per_epoch):
                ids = order[b * conf.batch_size : (b + 1) * conf.batch_size].to(device)
                t0 = time.perf_counter()
                with wtacrs.example_ids(ids), amp():
                    loss = model(**train.batch(ids)).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                value = loss.detach().item()  # a host sync, so the step's time is complete
                train_time += time.perf_counter() - t0
                if not math.isfinite(value):
                    raise FloatingPointError(f"training loss became {value} at step {step + 1}; lower the lr")
                losses.append(value)
                step += 1
                if recording and step == PEAK_STEPS:
                    record.__exit__(None, None, None)
                    recording = False
            accuracy, val_loss = evaluate(model, val, conf.batch_size, amp)
            evals.append({"epoch": epoch, "step": step, "accuracy": accuracy, "loss": val_loss})
            tick(f"epoch {epoch}/{conf.epochs}: accuracy {accuracy:.4f}")
    finally:
        if recording:
            record.__exit__(None, None, None)
    if cuda:
        peak, over = torch.cuda.max_memory_allocated(), "whole training run (torch.cuda.max_memory_allocated)"
    else:
        peak = resident + record.peak()
        over = (
            f"weights and data at the start (tensor sizes) + the CPU allocator's peak over the first "
            f"{min(PEAK_STEPS, step)} steps (optimizer state included)"
        )
    return ConvergenceRow(
        **{
            "method": method.name,
            "seed": spec.seed,
            "mode": spec.device,
            "measured": True,
            "data": path,
            "train_examples": len(train),
            "val_examples": len(val),
            "epochs": conf.epochs,
            "steps": step,
            "batch_size": conf.batch_size,
            "seq_len": spec.seq_len,
            "lr": lr,
            "norm_source": conf.norm_source if method.sampler else None,
            "losses": losses,
            "evals": evals,
            "accuracy": evals[-1]["accuracy"],
            "val_loss": evals[-1]["loss"],
            "train_time_s": train_time,
            "tokens_per_s": step * conf.batch_size * spec.seq_len / train_time,
            "peak_bytes": int(peak),
            "peak_measured_over": over,
            "cache_bytes": wtacrs.cache_bytes(model) if method.sampler else 0,
            "cache_examples_seen": _examples_seen(model),
        }
    )


def _examples_seen(model) -> int | None:
    """How many training examples have a cached norm (norm_source='example'), else None."""
    for _, layer in wtacrs.wtacrs_layers(model):
        if layer.norm_history.seen is not None:
            return int(layer.norm_history.seen.sum())
    return None
