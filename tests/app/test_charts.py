"""Figures that do not mislead (issue #17): checked on the figure JSON the server sends."""

import json

import pytest

from app.web import batch_charts, charts, job_charts, parallel_charts
from contract.rows import AttributionRow, ConvergenceRow, FidelityRow, MaxBatchRow, TrialRow

MIB, GIB = 2**20, 2**30


def rows(methods, batches, peak, **extra):
    return [
        TrialRow(method=m, batch_size=b, mode="cpu", peak_bytes=peak(m, b), tokens_per_s=100.0 * b, **extra)
        for m in methods
        for b in batches
    ]


def as_fidelity(rows):
    return [FidelityRow.model_validate({"batch_size": 4, "draws": 8, **r}) for r in rows]


def as_convergence(rows):
    return [ConvergenceRow.model_validate({"mode": "cpu", **r}) for r in rows]


def as_max_batch(rows):
    return [MaxBatchRow.model_validate({"mode": "cpu", **r}) for r in rows]


FSDP2 = {"device": "cpu", "parallel": {"strategy": "fsdp", "world_size": 2}}


def ranked(methods, batches, world_size=2, **extra):
    """Measured fsdp rows: rank r of method i holds (100 + 10 i + r) MiB."""
    out = []
    for i, m in enumerate(methods):
        for b in batches:
            peaks = [(100 + 10 * i + r + b) * MIB for r in range(world_size)]
            ranks = [{"rank": r, "peak_bytes": p, "step_time_s": 0.1 * (r + 1)} for r, p in enumerate(peaks)]
            out.append(
                TrialRow(
                    method=m,
                    batch_size=b,
                    mode="cpu",
                    peak_bytes=max(peaks),
                    strategy="fsdp",
                    world_size=world_size,
                    ranks=ranks,
                    peak_spread_bytes=max(peaks) - min(peaks),
                    **extra,
                )
            )
    return out


def tiny(m, b):  # bert-tiny: ~96 MiB, lora 0.003 MiB above full
    return int((96 + 0.4 * b + (0.003 if m == "lora" else 0)) * MIB)


def every_figure():
    bd = {"parameters": 30 * MIB, "gradients": 30 * MIB, "optimizer_state": 35 * MIB, "activations": MIB // 5}
    results = rows(["full", "lora"], [2, 3, 4], tiny, breakdown=bd)
    fid = [{"method": "wtacrs@0.3", "layer": "l0", "relative_error": 0.4, "exact_norm": 1.0}]
    conv = [
        {"method": "full", "losses": [1.0, 0.5], "evals": [], "peak_bytes": 420 * MIB, "accuracy": 0.861},
        {"method": "lora", "losses": [1.0, 0.6], "evals": [], "peak_bytes": 300 * MIB, "accuracy": 0.858},
    ]
    points = [{"method": "full", "at": "2026-01-01T10:00:00", "value": 0.0944815, "job_id": "a", "batch": 8}]
    return {
        "memory": job_charts.memory_vs_batch(results, None, "cpu"),
        "max_batch": job_charts.max_batch_bars(as_max_batch([{"method": "full", "max_batch_size": 3}])),
        "throughput": job_charts.throughput(results),
        "breakdown": job_charts.breakdown(results),
        "fidelity": job_charts.fidelity(as_fidelity(fid)),
        "loss": job_charts.loss_curves(as_convergence(conv)),
        "accuracy": job_charts.accuracy_vs_memory(as_convergence(conv)),
        "history": charts.history(points, "peak_bytes GiB"),
        "ranks": parallel_charts.per_rank(ranked(["full", "lora"], [2, 4]), FSDP2),
    }


@pytest.mark.parametrize("name", list(every_figure()))
def test_titles_sit_below_the_modebar_row(name):
    fig = every_figure()[name]
    json.dumps(fig, allow_nan=False)  # plain JSON for the page
    title, margin = fig["layout"]["title"], fig["layout"]["margin"]
    # anchored to the top of the plot area, not centred in the strip the modebar occupies
    assert (title["yref"], title["y"], title["yanchor"]) == ("paper", 1, "bottom")
    assert title["xanchor"] == "left" and title["x"] == 0
    assert margin["t"] >= 70  # modebar (~30 px) + title (~20 px) + pad
    assert "_" not in title["text"]  # words, not column names


def test_memory_axis_starts_at_zero_in_a_readable_unit():
    fig = job_charts.memory_vs_batch(rows(["full", "lora"], [2, 3, 4], tiny), None, "cpu")
    y = fig["layout"]["yaxis"]
    assert y["rangemode"] == "tozero"
    assert y["title"]["text"] == "peak memory (MiB)"
    values = [v for t in fig["data"] for v in t["y"]]
    assert 96 < min(values) and max(values) < 98  # MiB, not 0.0944815 GiB
    big = job_charts.memory_vs_batch(rows(["full"], [8, 16], lambda m, b: (1 + b) * GIB), None, "cuda")
    assert big["layout"]["yaxis"]["title"]["text"] == "peak memory (GiB)"
    assert big["data"][0]["y"] == [9.0, 17.0]


def test_device_line_counts_when_choosing_the_unit():
    fig = job_charts.memory_vs_batch(rows(["full"], [2], tiny), 80 * GIB, "cuda")
    assert fig["layout"]["shapes"][0]["y0"] == 80
    assert fig["layout"]["yaxis"]["title"]["text"].endswith("(GiB)")


def test_the_memory_line_is_labelled_under_itself_clear_of_the_title():
    """The line is often the chart's top: its label hangs below it at the left end (above it, it ran
    into the title, which sits just above the plot), and names the number."""
    label = job_charts.memory_vs_batch(rows(["full"], [2], tiny), 80 * GIB, "estimate")["layout"]["shapes"][0]["label"]
    assert label["text"] == "target 80 GiB" and label["yanchor"] == "top" and label["textposition"] == "start"
    measured = job_charts.memory_vs_batch(rows(["full"], [2], tiny), 79.6 * GIB, "cuda")["layout"]["shapes"][0]
    assert measured["label"]["text"] == "device memory 79.6 GiB"


@pytest.mark.parametrize(
    ("sizes", "kind", "ticks"),
    [
        ([2, 3, 4], "linear", [2, 3, 4]),  # no tick at 2.5
        ([8, 16, 32, 64], "log", [8, 16, 32, 64]),  # spans 8x: log2 spacing, ticks at the sizes
        ([1, 4], "linear", [1, 4]),
        (list(range(1, 200, 3)), "log", [1, 2, 4, 8, 16, 32, 64, 128]),  # too many to label: powers of two
    ],
)
def test_batch_axis_has_whole_ticks_and_log2_spacing_over_wide_ranges(sizes, kind, ticks):
    fig = job_charts.memory_vs_batch(rows(["full"], sizes, tiny), None, "cpu")
    x = fig["layout"]["xaxis"]
    assert x.get("type", "linear") == kind
    assert x["tickvals"] == ticks and all(isinstance(t, int) for t in x["tickvals"])
    assert x["ticktext"] == [str(t) for t in ticks]
    assert job_charts.throughput(rows(["full"], sizes, tiny))["layout"]["xaxis"] == x


def test_many_linear_batch_sizes_still_get_whole_ticks():
    x = job_charts.memory_vs_batch(rows(["full"], range(10, 40), tiny), None, "cpu")["layout"]["xaxis"]
    assert x.get("type", "linear") == "linear" and x["tickformat"] == "d" and "tickvals" not in x


def test_max_batch_axis_counts_in_whole_batches():
    y = job_charts.max_batch_bars(as_max_batch([{"method": "full", "max_batch_size": 3}]))["layout"]["yaxis"]
    assert y["dtick"] == 1 and y["rangemode"] == "tozero"


def test_coinciding_methods_both_stay_visible():
    same = rows(["wtacrs@0.3", "lora+wtacrs@0.3"], [2, 4], lambda m, b: 100 * MIB)
    for fig in (job_charts.memory_vs_batch(same, None, "cpu"), job_charts.throughput(same)):
        a, b = fig["data"]
        assert a["y"] == b["y"]
        assert a["marker"]["symbol"] != b["marker"]["symbol"]
        assert a["line"]["dash"] != b["line"]["dash"]
        assert b["marker"]["size"] < a["marker"]["size"]  # the one drawn on top is smaller
        assert b["line"]["width"] < a["line"]["width"]
        assert fig["layout"]["hovermode"] == "x unified"  # hovering shows both


def test_breakdown_puts_small_activations_first_distinct_and_labelled():
    bd = {"parameters": 30 * MIB, "gradients": 30 * MIB, "optimizer_state": 35 * MIB, "activations": MIB // 5}
    fig = job_charts.breakdown(rows(["full", "lora"], [2, 4], tiny, breakdown=bd))
    first = fig["data"][0]
    assert first["name"] == "activations" and first["orientation"] == "h"
    assert first["x"] == pytest.approx([0.2, 0.2], abs=1e-5)  # MiB, like the rest of the axis
    colours = [t["marker"]["color"] for t in fig["data"]]
    assert colours.count(first["marker"]["color"]) == 1
    assert fig["layout"]["xaxis"]["rangemode"] == "tozero" and fig["layout"]["xaxis"]["range"][0] == 0
    notes = [a["text"] for a in fig["layout"]["annotations"]]
    assert notes == [" activations 205 KiB (0%)"] * 2
    table = fig["table"]
    assert table["columns"][:2] == ["method", "activations"]
    assert table["rows"][0][:2] == ["full", "205 KiB"]


def test_breakdown_table_names_the_peak_and_everything_saved_for_backward():
    bd = {"parameters": 30 * MIB, "gradients": 30 * MIB, "optimizer_state": 35 * MIB, "activations": MIB}
    summed = 96 * MIB
    at_peak = rows(["full"], [2], lambda m, b: summed, breakdown=bd, activation_bytes=3 * MIB)
    fig = job_charts.breakdown(at_peak)
    assert fig["table"]["columns"][-2:] == ["total (= peak)", "saved for backward (all, first step)"]
    assert fig["table"]["rows"][0][-2:] == ["96.0 MiB", "3.00 MiB"]
    # a row whose categories do not reach its peak says by how much, rather than disagree silently
    short = rows(["full"], [2], lambda m, b: summed + 9 * MIB, breakdown=bd)
    assert job_charts.breakdown(short)["table"]["rows"][0][-2:] == [
        "96.0 MiB (peak 105 MiB: 9.00 MiB not in a category)",
        "N/A",
    ]


def test_throughput_draws_the_spread_of_its_steps_and_flags_unsteady_rows():
    def timed(method, batch, median, fastest, slowest, steps):
        return TrialRow(
            method=method, batch_size=batch, mode="cpu", peak_bytes=MIB, tokens_per_s=1000 / median,
            step_time_s=median, step_time_min_s=fastest, step_time_max_s=slowest, timed_steps=steps,
        )  # fmt: skip

    fig = job_charts.throughput([timed("full", 2, 1.0, 0.9, 1.1, 5), timed("lora", 2, 1.0, 0.5, 2.0, 3)])
    steady, unsteady = fig["data"]
    assert steady["error_y"]["array"] == pytest.approx([1000 / 0.9 - 1000])  # up to the fastest step
    assert steady["error_y"]["arrayminus"] == pytest.approx([1000 - 1000 / 1.1])  # down to the slowest
    assert unsteady["error_y"]["array"] == pytest.approx([1000.0])
    words = {row[0]: row[-1] for row in fig["table"]["rows"]}
    assert words["full"] == "steady"
    assert words["lora"] == "unsteady: steps vary 150% of the median; only 3 timed steps"
    assert fig["table"]["rows"][0][3] == "1,100.0 – 900.0 ms"


def test_attribution_merges_peft_prefixes_and_keeps_ops_off_the_bars():
    full = AttributionRow(
        method="full", batch_size=4, mode="cpu", total_bytes=3 * MIB,
        groups=[{"module": "encoder.layer.*.attention", "bytes": 3 * MIB, "ops": {"bmm": 3 * MIB}}],
    )  # fmt: skip
    lora = AttributionRow(
        method="lora", batch_size=4, mode="cpu", total_bytes=3 * MIB,
        groups=[
            {"module": "base_model.model.encoder.layer.*.attention", "bytes": 2 * MIB, "ops": {"bmm": 2 * MIB}},
            {"module": "encoder.layer.*.attention", "bytes": MIB, "ops": {"softmax": MIB}},
        ],
    )  # fmt: skip
    fig = job_charts.attribution([full, lora])
    assert [t["y"] for t in fig["data"]] == [["encoder.layer.*.attention"]] * 2  # one bar per module, not two
    assert fig["data"][1]["x"] == [3] and fig["data"][1]["text"] == ["bmm 2.00 MiB, softmax 1.00 MiB"]
    assert all(t["textposition"] == "none" for t in fig["data"])  # ops in the hover and the table
    assert fig["table"]["rows"][1][3] == "encoder.layer.*.attention"


OLD_ZERO = {"relative_error": 0.0, "relative_bias": 0.0, "relative_variance": 0.0, "exact_norm": 1e-30}
NEW_ZERO = {"relative_error": None, "relative_bias": None, "relative_variance": None, "exact_norm": 0.0}
DEFINED = {"relative_error": 0.4, "relative_bias": 0.01, "relative_variance": 0.16, "exact_norm": 2.5}


@pytest.mark.parametrize("zero", [OLD_ZERO, NEW_ZERO], ids=["old-1e-30", "new-null"])
def test_fidelity_with_a_zero_exact_gradient_is_not_applicable_never_a_perfect_score(zero):
    fid = [{"method": "wtacrs@0.3", "batch_size": 4, "layer": f"l{i}", **DEFINED} for i in range(2)]
    fid += [{"method": "lora+wtacrs@0.3", "batch_size": 4, "layer": f"l{i}", **zero} for i in range(2)]
    fig = job_charts.fidelity(as_fidelity(fid))
    defined, na = fig["data"]
    assert defined["y"] == [0.4, 0.4] and defined["name"] == "wtacrs@0.3"
    assert na["y"] == [None, None]  # gaps, not points at 0
    assert na["name"] == "lora+wtacrs@0.3: N/A (exact gradient is zero)"
    rows_ = {r[0]: r for r in fig["table"]["rows"]}
    assert rows_["wtacrs@0.3"][3:] == ["0.400", "0.400", "0.0100", "0.160"]
    assert rows_["lora+wtacrs@0.3"][3:] == ["N/A (exact gradient is zero)"] * 4
    assert "0.00" not in rows_["lora+wtacrs@0.3"]


def test_fidelity_with_some_layers_undefined_counts_them():
    fid = [
        {"method": "m", "batch_size": 4, "layer": "a", **DEFINED},
        {"method": "m", "batch_size": 4, "layer": "b", **OLD_ZERO},
    ]
    fig = job_charts.fidelity(as_fidelity(fid))
    assert fig["data"][0]["y"] == [0.4, None] and fig["data"][0]["name"] == "m (1 layers N/A)"
    assert fig["table"]["rows"][0][2:4] == ["2 (1 N/A)", "0.400"]
    assert fig["layout"]["yaxis"]["rangemode"] == "tozero"


def test_history_reads_in_words_and_readable_units():
    points = [
        {"method": "full", "at": "2026-01-01T10:00:00+00:00", "value": 0.0944815, "job_id": "a", "batch": 8},
        {"method": "full", "at": "2026-01-01T10:00:01+00:00", "value": 0.0944850, "job_id": "b", "batch": 8},
    ]
    fig = charts.history(points, "peak_bytes GiB")
    layout = fig["layout"]
    assert layout["title"]["text"] == "Peak memory over time"
    assert layout["yaxis"]["title"]["text"] == "peak memory (MiB)" and layout["yaxis"]["rangemode"] == "tozero"
    assert fig["data"][0]["y"] == pytest.approx([96.749, 96.752], abs=1e-3)
    assert layout["yaxis"]["tickformat"] == ".3~r"
    start, end = (charts.dt.datetime.fromisoformat(t) for t in layout["xaxis"]["range"])
    assert end - start >= charts.dt.timedelta(hours=1)  # one sitting: hours on the axis, not half seconds
    speed = charts.history([{**points[0], "value": 1234.5}], "tokens_per_s")["layout"]
    assert speed["title"]["text"] == "Throughput over time"
    assert speed["yaxis"]["title"]["text"] == "throughput (tokens/s)"
    assert fig["data"][0]["text"] == ["batch 8 · job a", "batch 8 · job b"]  # each point says its batch


def test_accuracy_axis_is_not_zoomed_onto_seed_noise():
    conv = [
        {"method": "full", "losses": [1.0], "peak_bytes": 420 * MIB, "accuracy": 0.861},
        {"method": "lora", "losses": [1.0], "peak_bytes": 300 * MIB, "accuracy": 0.858},
    ]
    layout = job_charts.accuracy_vs_memory(as_convergence(conv))["layout"]
    low, high = layout["yaxis"]["range"]
    assert high - low >= charts.ACCURACY_SPAN and low <= 85.8 and high >= 86.1
    assert layout["xaxis"]["range"][0] == 0 and layout["xaxis"]["title"]["text"].endswith("(MiB)")


@pytest.mark.parametrize(
    ("n", "text"),
    [(0.0944815 * GIB, "96.7 MiB"), (2.126 * GIB, "2.13 GiB"), (1.5 * GIB, "1.50 GiB"), (0, "0"), (None, "")],
)
def test_memory_text(n, text):
    assert charts.memory_text(n) == text


def test_frontier_joins_only_the_points_nothing_beats_on_both_axes():
    rs = [
        TrialRow(method="full", batch_size=8, mode="cuda", peak_bytes=10 * GIB, tokens_per_s=1000.0),
        TrialRow(method="ckpt", batch_size=8, mode="cuda", peak_bytes=3 * GIB, tokens_per_s=700.0),
        TrialRow(method="lora", batch_size=8, mode="cuda", peak_bytes=9 * GIB, tokens_per_s=1200.0),
        TrialRow(method="slow", batch_size=8, mode="cuda", peak_bytes=6 * GIB, tokens_per_s=500.0),  # beaten by ckpt
        TrialRow(method="oom", batch_size=16, mode="cuda", oom=True),
    ]
    fig = job_charts.frontier(rs)
    line = fig["data"][-1]
    assert line["name"] == "frontier" and line["x"] == [3, 9]  # ckpt, then lora; full and slow are beaten
    assert [row[0] for row in fig["table"]["rows"]] == ["ckpt", "lora"]
    assert job_charts.frontier([TrialRow(method="full", batch_size=2, mode="estimate", peak_bytes=GIB)]) is None


def test_attribution_bars_the_largest_modules_per_method():
    def row(method, attention, linear):
        groups = [
            {"module": "encoder.block.*.SelfAttention", "bytes": attention, "ops": {"matmul": attention}},
            {"module": "encoder.block.*.wo", "bytes": linear, "ops": {"linear": linear}},
        ]
        groups.sort(key=lambda g: -g["bytes"])
        total = attention + linear
        return AttributionRow(method=method, batch_size=100, mode="estimate", total_bytes=total, groups=groups)

    fig = job_charts.attribution([row("full", 3 * GIB, 4 * GIB), row("wtacrs@0.3", 3 * GIB, GIB)])
    full, sampled = fig["data"]
    assert full["y"] == ["encoder.block.*.wo", "encoder.block.*.SelfAttention"]  # largest first
    assert full["x"] == [4, 3] and sampled["x"] == [1, 3]
    assert fig["table"]["rows"][1][3:5] == ["encoder.block.*.SelfAttention", "75%"]
    assert job_charts.attribution([AttributionRow(method="full", batch_size=1, mode="cpu", oom=True)]) is None


def test_per_rank_memory_has_a_bar_per_rank_per_method_at_one_batch():
    rows = ranked(["full", "lora"], [2, 4]) + ranked(["wtacrs@0.3"], [2])  # 4 is not common to all
    fig = parallel_charts.per_rank(rows, FSDP2)
    assert [(t["type"], t["name"], t["x"]) for t in fig["data"]] == [
        ("bar", m, ["rank 0", "rank 1"]) for m in ("full", "lora", "wtacrs@0.3")
    ]
    assert fig["data"][0]["y"] == [102, 103] and fig["data"][0]["text"] == ["100 ms/step", "200 ms/step"]
    assert fig["layout"]["barmode"] == "group" and fig["layout"]["yaxis"]["title"]["text"] == "peak memory (MiB)"
    colors = {t["name"]: t["marker"]["color"] for t in fig["data"]}
    assert colors["full"] != colors["lora"]  # one colour per method, as in the other charts
    title = fig["layout"]["title"]["text"]
    assert title == "Peak memory per rank · fsdp×2, batch 2 (measured)"
    assert fig["table"]["columns"] == ["method", "batch per rank", "rank 0", "rank 1", "spread (max - min)"]
    assert fig["table"]["rows"][0] == ["full", "2", "102 MiB", "103 MiB", "1.00 MiB"]


def test_per_rank_memory_of_an_estimate_is_rank_0_and_says_so():
    rows = [
        TrialRow(
            method=m, batch_size=2, mode="estimate", measured=False, peak_bytes=p, strategy="fsdp", world_size=8, rank=0
        )
        for m, p in (("full", 3 * GIB), ("lora", 2 * GIB))
    ]
    fig = parallel_charts.per_rank(rows, {"parallel": {"strategy": "fsdp", "world_size": 8}})
    assert [(t["x"], t["y"]) for t in fig["data"]] == [(["rank 0"], [3.0]), (["rank 0"], [2.0])]
    assert "fsdp×8" in fig["layout"]["title"]["text"] and "(estimated: rank 0)" in fig["layout"]["title"]["text"]
    assert fig["table"]["rows"][1][-1] == "N/A (rank 0 only)"


def test_no_per_rank_chart_for_one_device_or_failed_rows():
    assert parallel_charts.per_rank(rows(["full"], [2], tiny), {"device": "cpu"}) is None
    assert job_charts.breakdown(rows(["full"], [2], tiny)) is None  # no breakdown in the rows: no empty axes
    failed = [TrialRow(method="full", batch_size=2, mode="cpu", oom=True, strategy="ddp", world_size=2)]
    assert parallel_charts.per_rank(failed, {"parallel": {"strategy": "ddp", "world_size": 2}}) is None


def test_parallel_jobs_label_the_max_batch_and_memory_charts_per_rank():
    bars = job_charts.max_batch_bars(as_max_batch([{"method": "full", "max_batch_size": 3}]), "fsdp×8")
    assert bars["layout"]["title"]["text"] == "Largest micro-batch per rank that fits · fsdp×8"
    assert bars["layout"]["yaxis"]["title"]["text"] == "largest micro-batch per rank"
    memory = job_charts.memory_vs_batch(ranked(["full"], [2]), None, "cpu", "fsdp×2")
    assert memory["layout"]["title"]["text"] == "Peak memory per rank vs micro-batch · fsdp×2 (measured)"
    assert parallel_charts.parallel_label({"parallel": {"strategy": "none", "world_size": 1}}) is None
    assert parallel_charts.parallel_label({}) is None
    assert (
        job_charts.max_batch_bars(as_max_batch([{"method": "full", "max_batch_size": 3}]))["layout"]["title"]["text"]
        == "Largest batch that fits"
    )


def test_a_method_looks_the_same_whatever_else_is_in_the_figure():
    """Issue 27: colour and dash are a function of the method's name, not of its place in a figure."""
    alone = job_charts.memory_vs_batch(rows(["offload"], [2], tiny), None, "cpu")["data"][0]
    among = job_charts.memory_vs_batch(rows(["full", "lora", "offload"], [2], tiny), None, "cpu")["data"][2]
    assert (alone["line"]["color"], alone["line"]["dash"]) == (among["line"]["color"], among["line"]["dash"])
    assert charts.method_style("wtacrs@0.3 · fsdp×8 [cuda]") == charts.method_style("wtacrs@0.3")
    assert charts.method_style("wtacrs@0.3") == charts.method_style("wtacrs@0.5") == charts.METHOD_STYLES["wtacrs"]
    assert charts.method_style("lora+checkpointing")[1] != "solid"  # full's dash
    assert charts.method_style("lora+checkpointing") == charts.method_style("lora+checkpointing")
    assert all(charts.method_style(m)[0] != charts.RED for m in ("x", "y", "lora+checkpointing", "meft2@r=4"))
    bars = job_charts.max_batch_bars(as_max_batch([{"method": "offload", "max_batch_size": 3}]))
    assert bars["data"][0]["marker"]["color"] == [charts.method_style("offload")[0]]


def test_ratios_read_one_way_in_words():
    assert charts.memory_ratio_words(2.4, "full") == "2.4x less memory than full"
    assert charts.memory_ratio_words(1 / 1.3, "full") == "1.3x more memory than full"
    assert charts.memory_ratio_words(1.0004, "full") == "same memory as full"
    assert charts.memory_ratio_words(12.41, "full") == "12.4x less memory than full"
    assert charts.memory_ratio_words(None, "full") == "" and charts.memory_ratio_words(float("inf"), "full") == ""
    assert charts.share_words(0.8, "full", "tokens/s") == "0.8x full's tokens/s"
    assert charts.share_words(1.25, "lora", "batch") == "1.25x lora's batch"
    assert charts.share_words(1.001, "full", "tokens/s") == "same tokens/s as full"


def test_largest_batch_bars_show_the_batch_then_the_ratio_and_the_conditions():
    """Issue 27: '140' over '2.92x full's batch', not '2.92x full' alone; titled with the target, length, dtype."""
    sizes = [{"method": "full", "max_batch_size": 48}, {"method": "wtacrs@0.3", "max_batch_size": 140}]
    bars = job_charts.max_batch_bars(as_max_batch(sizes), None, 80 * GIB, 128, "fp32")
    bar = bars["data"][0]
    assert bar["text"] == ["", "2.92x full's batch"]
    assert bar["customdata"] == ["48", "140"]
    assert bar["texttemplate"] == "%{customdata}<br>%{text}"  # the batch size first, the ratio under it
    assert bars["layout"]["title"]["text"] == "Largest batch that fits in 80 GiB · length 128 · fp32"
    # the rows' own limit and length (what the search used) before the job's
    own = as_max_batch([{**s, "limit_bytes": 72 * GIB, "seq_len": 256} for s in sizes])
    title = job_charts.max_batch_bars(own, "fsdp×8", 80 * GIB, 128, "bf16")["layout"]["title"]["text"]
    assert title == "Largest micro-batch per rank that fits in 72 GiB · fsdp×8 · length 256 · bf16"
    assert job_charts.max_batch_title(limit_bytes=79.6 * GIB) == "Largest batch that fits in 79.6 GiB"


def test_a_batch_the_search_stopped_at_reads_as_a_lower_bound():
    """A search that reached its upper bound found that the batch fits, not that the next does not:
    the bar says '≥ 4096' and its ratio 'at least'; against a capped full, 'at most'; two capped
    rows have no ratio (seen on the what-fits answer for t5-small at 80 GiB: three bars read 4096)."""
    rows = as_max_batch(
        [
            {"method": "full", "max_batch_size": 1794},
            {"method": "lora", "max_batch_size": 2584},
            {"method": "wtacrs@0.3", "max_batch_size": 4096, "capped_at_upper": True},
        ]
    )
    bar = job_charts.max_batch_bars(rows, None, 80 * GIB, 128, "fp32")["data"][0]
    assert bar["customdata"] == ["1794", "2584", "≥ 4096"]
    assert bar["text"] == ["", "1.44x full's batch", "at least 2.28x full's batch"]
    capped_full = as_max_batch(
        [
            {"method": "full", "max_batch_size": 4096, "capped_at_upper": True},
            {"method": "lora", "max_batch_size": 2048},
            {"method": "wtacrs@0.3", "max_batch_size": 4096, "capped_at_upper": True},
        ]
    )
    bar = job_charts.max_batch_bars(capped_full, None, 80 * GIB, 128, "fp32")["data"][0]
    assert bar["text"] == ["", "at most 0.5x full's batch", ""]
    group = batch_charts.BatchGroup("estimate", "fp32", 128, 80 * GIB, "none", 1, False)
    group.rows = {r.method: r for r in rows}
    group.jobs = dict.fromkeys(group.rows, "j1")
    assert [(r["batch"], r["words"]) for r in group.table()][2] == ("≥ 4096", "at least 2.28x full's batch")


def test_other_modules_import_only_public_chart_helpers():
    """charts.py is a public module: what another module imports from it has no leading underscore
    (a private name is charts.py's own and may change)."""
    import ast
    from pathlib import Path

    app = Path(charts.__file__).resolve().parents[1]
    for path in app.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "charts":
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path}:{node.lineno} imports {private} from {node.module}"
