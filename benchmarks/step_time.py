"""Training-step time at equal batch: every method side by side in one run, on CPU or CUDA.

Usage:
  PYTHONPATH=.:benchmarks python benchmarks/step_time.py --device cuda --models t5-base t5-large minilm
  PYTHONPATH=.:benchmarks python benchmarks/step_time.py --device cpu --models bert-base --batch 8 --seq 128
  ... [--dtype fp32|bf16|bf16-weights] [--methods full wtacrs@0.3 ...] [--compile [--compile-mode M]] [--json FILE]

Each method's model is built by the profiler (`profiler.trial.build.build_trial`: the preset's config,
random weights from the same seed, the method applied by `profiler.methods`; `minilm` is the
all-MiniLM-L6-v2 architecture), with the AdamW users get by default. A step is forward, backward and
the optimizer step. All methods stay built, and the steps go round-robin (full, wtacrs@0.3, lora, ...,
then again), so drift in clocks or machine load hits every method alike and the ratios are side by
side. On CUDA each step is timed with CUDA events and synchronised before the next method's step.
`--compile` runs each model under torch.compile (`model = torch.compile(model)`, inductor; `--compile-mode
reduce-overhead` for CUDA graphs), compiled in its own warm-up steps (`profiler.trial.compiled.compile_step`)
before the timed ones. `--json` is rewritten after the builds and after every timed round (each
method's times so far, `rounds_timed`, `complete`), so a run killed at a deadline keeps what it timed.

Prints, per model, the median step time, its ratio to full and (for lora+... methods) to lora, and
checks the bars the issue set where the run matches their setting (model, device, batch, length 128).
`layer-only@R` (the linear layers alone, no companion savers) is accepted beside the profiler's methods.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from common import machine, sampler_config  # noqa: E402

import wtacrs  # noqa: E402
from contract.methods import parse_method  # noqa: E402
from contract.spec import JobSpec  # noqa: E402
from profiler.trial.build import Trial, build_trial, free_cached  # noqa: E402
from profiler.trial.compiled import compile_step, compiled_graphs  # noqa: E402

ALIASES = {"minilm": "all-minilm-l6-v2"}  # --models name -> profiler preset
# the batch each model's bar is set at (--batch overrides); other presets get 8
DEFAULT_BATCH = {"t5-base": 100, "t5-large": 100, "minilm": 32, "bert-base": 8}
METHODS = ["full", "wtacrs@0.3", "lora", "lora+wtacrs@0.3", "checkpointing"]


@dataclass(frozen=True)
class Bar:
    """`method` at most `limit` x `reference`'s median step time, for this model on this device."""

    model: str
    device: str
    batch: int
    method: str
    reference: str
    limit: float
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    seq: int = 128


BARS = [
    Bar("t5-large", "cuda", 100, "wtacrs@0.3", "full", 1.00),
    Bar("t5-base", "cuda", 100, "wtacrs@0.3", "full", 1.05),
    Bar("minilm", "cuda", 32, "wtacrs@0.3", "full", 1.3),
    *(
        Bar(m, "cuda", b, "lora+wtacrs@0.3", "lora", 1.15)
        for m, b in (("t5-large", 100), ("t5-base", 100), ("minilm", 32))
    ),
    Bar("bert-base", "cpu", 8, "wtacrs@0.3", "full", 0.9, ("fp32",)),
]


@dataclass
class Timed:
    trial: Trial | None = None
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)  # cpu: this process's CPU seconds per step
    compile: dict = field(default_factory=dict)
    error: str | None = None  # why this method stopped (an OOM with every method resident, ...)

    def fail(self, err: Exception) -> None:
        self.error = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        self.trial = None  # the others go on without it; its memory goes back once the frame is left


def make_spec(preset: str, args, batch: int) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": preset,
            "methods": ["full"],
            "seq_len": args.seq,
            "batch_sizes": [batch],
            "dtype": args.dtype,
            "device": args.device,
            "measurements": ["peak_memory"],
        }
    )


def build(spec: JobSpec, method: str, device: torch.device) -> Trial:
    """The profiler's trial of `method` (layer-only@R: full, then the bare layers applied), with the
    optimizer users get by default (the profiler's memory trials turn AdamW's foreach off)."""
    if method.startswith("layer-only@"):
        trial = build_trial(spec, parse_method("full"), spec.batch_sizes[0], device)
        wtacrs.apply_wtacrs(trial.model, sampler_config("layer-only", float(method.partition("@")[2])))
    else:
        trial = build_trial(spec, parse_method(method), spec.batch_sizes[0], device)
    trial.optimizer = torch.optim.AdamW([p for p in trial.model.parameters() if p.requires_grad], lr=spec.lr)
    return trial


def step(trial: Trial) -> None:
    trial.forward_backward()
    trial.optimizer_step()


def timed_step(t: Timed, cuda: bool) -> None:
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(t.trial)
        end.record()
        end.synchronize()  # the next method's step starts on an idle GPU
        t.times.append(start.elapsed_time(end) / 1000)
        return
    # beside the wall clock, the CPU time this process spent: on a shared host the wall clock also
    # counts the time slices other processes took, the CPU time the work done (all threads summed)
    c0, t0 = time.process_time(), time.perf_counter()
    step(t.trial)
    t.times.append(time.perf_counter() - t0)
    t.cpu_times.append(time.process_time() - c0)


def run_model(name: str, args, on_update=None) -> dict:
    """Every method of `args.methods` built, warmed up, then timed round-robin. `on_update(result)`
    gets the result so far after the builds and after every timed round (each method's times up
    to then), so a run cut short keeps what it timed."""
    preset = ALIASES.get(name, name)
    batch = args.batch or DEFAULT_BATCH.get(name, 8)
    spec = make_spec(preset, args, batch)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.compile:
        torch._dynamo.reset()
    methods = {method: Timed() for method in args.methods}
    info = {"model": name, "preset": preset, "batch": batch, "seq": args.seq, "dtype": args.dtype}
    info |= {
        "device": args.device,
        "compiled": args.compile,
        "compile_mode": args.compile_mode if args.compile else None,
    }
    info |= {"steps": args.steps, "warmup": args.warmup}
    counters = {"graphs": 0, "retries": 0, "rounds": 0}

    def update(final: bool = False) -> dict:
        out = summarize(info, methods, counters, cuda, final)
        if on_update:
            on_update(out)
        return out

    for method, t in methods.items():
        try:
            t.trial = build(spec, method, device)
            if args.compile:  # each compiled in its own warm-up steps, none dropping another's graphs
                t.compile = compile_step(t.trial, reset=False, **compile_kwargs(args))
                print(f"  {name} {method}: compiled in {t.compile['compile_s']:.1f} s", file=sys.stderr)
        except Exception as err:  # recorded; the other methods still run
            t.fail(err)
        update()
    running = [t for t in methods.values() if t.trial is not None]

    def each(action) -> None:
        failed = False
        for t in running:
            if t.trial is not None:
                try:
                    action(t)
                except Exception as err:
                    t.fail(err)
                    failed = True
        if failed:  # a failed method's memory, once nothing refers to it; the others' graphs stay
            free_cached(drop_compiled=False)

    for _ in range(args.warmup):
        each(lambda t: step(t.trial))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        counters["retries"] = torch.cuda.memory_stats().get("num_alloc_retries", 0)
    counters["graphs"] = compiled_graphs()
    for i in range(args.steps):  # round-robin: one step of each method, then the next round
        each(lambda t: timed_step(t, cuda))
        counters["rounds"] = i + 1
        print(f"  {name}: round {i + 1}/{args.steps}", file=sys.stderr, flush=True)
        update()
    out = update(final=True)
    methods.clear()
    free_cached()
    return out


def summarize(info: dict, methods: dict[str, Timed], counters: dict, cuda: bool, final: bool) -> dict:
    """The result so far: each method's times, median and ratios (a method built but not timed yet is
    `pending`)."""
    # compiled: a graph compiled while timing means a timed step compiled (a warm-up too short, a guard
    # that fails every step); eager: 0
    recompiles = compiled_graphs() - counters["graphs"] if counters["rounds"] else 0
    out = info | {"recompiles_timed": recompiles, "rounds_timed": counters["rounds"], "complete": final, "methods": {}}
    if cuda and counters["rounds"]:
        out["peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        # allocator retries while timing (every model resident at once): each is a cudaFree/cudaMalloc
        # inside a step, and slows the step it lands in
        out["alloc_retries_timed"] = torch.cuda.memory_stats().get("num_alloc_retries", 0) - counters["retries"]
    for method, t in methods.items():
        if t.error is not None:
            out["methods"][method] = {"error": t.error} | t.compile
            continue
        if not t.times:
            out["methods"][method] = {"pending": "built, not timed yet" if t.trial else "not built yet"} | t.compile
            continue
        times = list(t.times)
        med = statistics.median(times)
        row = {"median_s": med, "min_s": min(times), "max_s": max(times), "times_s": times}
        if t.cpu_times:
            row |= {"cpu_median_s": statistics.median(t.cpu_times), "cpu_times_s": list(t.cpu_times)}
        out["methods"][method] = row | t.compile
    timed = {m: r for m, r in out["methods"].items() if "median_s" in r}
    for method, row in timed.items():
        for ref in ("full", "lora"):
            if ref in timed and (ref == "full" or method == "lora" or method.startswith("lora+")):
                row[f"x_{ref}"] = row["median_s"] / timed[ref]["median_s"]
                if "cpu_median_s" in row:
                    row[f"x_{ref}_cpu_time"] = row["cpu_median_s"] / timed[ref]["cpu_median_s"]
    out["bars"] = check_bars(out)
    return out


def compile_kwargs(args) -> dict:
    # torch.compile's mode ("reduce-overhead": CUDA graphs); only passed when asked for, so a
    # compile_step without the keyword still serves the default
    return {"mode": args.compile_mode} if args.compile_mode else {}


def check_bars(result: dict) -> list[dict]:
    checks = []
    for bar in BARS:
        if (bar.model, bar.device) != (result["model"], result["device"]) or result["dtype"] not in bar.dtypes:
            continue
        got = result["methods"].get(bar.method, {}).get(f"x_{bar.reference}")
        check = {"method": bar.method, "reference": bar.reference, "limit": bar.limit, "ratio": got}
        if got is None:
            check["status"] = f"not run (needs {bar.method} and {bar.reference})"
        elif (result["batch"], result["seq"]) != (bar.batch, bar.seq):
            check["status"] = f"not checked: the bar is set at batch {bar.batch}, length {bar.seq}"
        else:
            check["status"] = "met" if got <= bar.limit else "missed"
        checks.append(check)
    return checks


def report(result: dict) -> str:
    mode = "eager"
    if result["compiled"]:
        mode = f"compiled (torch.compile, mode {result.get('compile_mode') or 'default'})"
    rounds = result.get("rounds_timed", result["steps"])
    done = "" if rounds == result["steps"] else f" ({rounds} of {result['steps']} rounds timed)"
    lines = [
        f"## {result['model']} ({result['preset']}), batch {result['batch']}, length {result['seq']}, "
        f"{result['dtype']}, {result['device']}, {mode}",
        f"{result['steps']} timed steps per method after {result['warmup']} warm-up, round-robin{done}",
        "",
    ]
    cpu = result["device"] == "cpu"
    ratio_keys = ["x_full", "x_lora"] + (["x_full_cpu_time", "x_lora_cpu_time"] if cpu else [])
    header = "| method | median ms | min ms | max ms | x full | x lora |"
    lines += [
        header + (" x full, CPU time | x lora, CPU time |" if cpu else ""),
        "|---|" + "---:|" * (len(ratio_keys) + 3),
    ]
    for method, r in result["methods"].items():
        if "error" in r or "pending" in r:
            why = r.get("error") or r["pending"]
            lines.append(f"| {method} | {why[:120]} |" + " |" * (len(ratio_keys) + 2))
            continue
        ratios = [f"{r[k]:.3f}x" if k in r else "" for k in ratio_keys]
        ms = [f"{1000 * r[k]:,.1f}" for k in ("median_s", "min_s", "max_s")]
        lines.append(f"| {method} | {' | '.join(ms)} | {' | '.join(ratios)} |")
    if "alloc_retries_timed" in result:
        lines += ["", f"peak allocated {result['peak_allocated_bytes'] / 2**30:.1f} GiB, "
                  f"{result['alloc_retries_timed']} allocator retries while timing"]  # fmt: skip
    if result.get("recompiles_timed"):
        lines += [
            "",
            f"**{result['recompiles_timed']} graphs compiled while timing: these step times include compiling**",
        ]
    for b in result["bars"]:
        ratio = "—" if b["ratio"] is None else f"{b['ratio']:.3f}x"
        lines.append(f"- bar: {b['method']} <= {b['limit']:.2f}x {b['reference']}: {ratio}, {b['status']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--models", nargs="+", help="presets, or minilm (default: t5-base t5-large minilm on cuda, bert-base on cpu)"
    )
    ap.add_argument(
        "--batch", type=int, help=f"batch size for every model (default per model: {DEFAULT_BATCH}, else 8)"
    )
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--dtype", choices=["fp32", "bf16", "bf16-weights"], default="fp32")
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per method")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per method first (after compiling)")
    ap.add_argument("--compile", action="store_true", help="torch.compile each model (inductor)")
    ap.add_argument(
        "--compile-mode", choices=["default", "reduce-overhead", "max-autotune"], help="torch.compile's mode"
    )
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device here")
    args.models = args.models or (["t5-base", "t5-large", "minilm"] if args.device == "cuda" else ["bert-base"])
    for m in args.methods:
        if not m.startswith("layer-only@"):
            parse_method(m)  # a typo fails before any model is built
    # every method's model stays compiled side by side: each is one more cache entry for the same
    # transformers code, past Dynamo's default limit of 8 with several methods
    limit = torch._dynamo.config.patch(recompile_limit=64) if args.compile else contextlib.nullcontext()
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    result = {"machine": machine(), "device_name": where, "argv": sys.argv if argv is None else argv, "models": []}
    print(f"# Step time, methods side by side; {where}; {result['machine']}", flush=True)

    def write(partial: dict | None = None) -> None:
        # after the builds and after every timed round: a run killed mid-way leaves what it timed
        if args.json:
            models = result["models"] + ([partial] if partial is not None else [])
            args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.json.with_name(args.json.name + ".part")
            tmp.write_text(json.dumps(result | {"models": models}, indent=1))
            tmp.replace(args.json)  # never half a file

    with limit:
        for name in args.models:
            result["models"].append(run_model(name, args, on_update=write))
            print("\n" + report(result["models"][-1]), flush=True)
            write()
    return result


if __name__ == "__main__":
    main()
