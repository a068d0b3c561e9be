"""Sentence-classification data from a TSV (header, then sentence<TAB>label), split with a fixed seed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

SST2_ENV = "WTACRS_SST2_TSV"


def default_sst2_path() -> Path:
    """GLUE SST-2 train: $WTACRS_SST2_TSV, else shared/data/sst2/train.tsv beside the checkout."""
    if os.environ.get(SST2_ENV):
        return Path(os.environ[SST2_ENV])
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "sst2" / "train.tsv"


def read_tsv(path: str | Path) -> tuple[list[str], list[int]]:
    """Rows of `sentence<TAB>label`; the first line is a header. Labels are integers >= 0."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"data file {str(path)!r} does not exist on this host; give convergence.data as a TSV with a header "
            f"line and sentence<TAB>label rows (or set ${SST2_ENV})"
        )
    # bytes, not text mode: SST-2's sentences end in a stray "\r" that universal newlines would split on
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    sentences, labels = [], []
    for number, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        sentence, tab, label = line.rpartition("\t")
        if not tab or not label.strip().isdigit():
            raise ValueError(
                f"{path}:{number}: expected 'sentence<TAB>label' with an integer label >= 0, got {line[:80]!r}"
            )
        sentences.append(sentence.strip())
        labels.append(int(label))
    if not sentences:
        raise ValueError(f"{path} holds no rows after its header; expected sentence<TAB>label lines")
    return sentences, labels


@dataclass
class Split:
    train_ids: list[int]  # indices into the file's rows; the position in this list is the example id
    val_ids: list[int]
    num_labels: int


def split(labels: list[int], val_examples: int, train_examples: int | None, seed: int) -> Split:
    n = len(labels)
    if val_examples >= n:
        raise ValueError(f"val_examples={val_examples} leaves nothing to train on: the file has {n} rows")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val, rest = order[:val_examples], order[val_examples:]
    train = rest if train_examples is None else rest[:train_examples]
    return Split(train, val, max(labels) + 1)


class Encoded:
    """Token ids of a set of rows, padded to seq_len (the profiled shape), on `device`."""

    def __init__(self, tokenizer, sentences: list[str], labels: list[int], rows: list[int], seq_len: int, device):
        enc = tokenizer(
            [sentences[i] for i in rows],
            padding="max_length",
            truncation=True,
            max_length=seq_len,
            return_tensors="pt",
        )
        self.inputs = {k: v.to(device) for k, v in enc.items()}
        self.labels = torch.tensor([labels[i] for i in rows], device=device)

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self) -> list[torch.Tensor]:
        return [*self.inputs.values(), self.labels]

    def batch(self, ids: torch.Tensor) -> dict:
        """Rows at positions `ids` (a 1-D long tensor on this data's device)."""
        return {**{k: v[ids] for k, v in self.inputs.items()}, "labels": self.labels[ids]}
