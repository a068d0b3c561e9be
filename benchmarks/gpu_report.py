"""The GPU suite's report (benchmarks/gpu_suite.py): each memory setting measured beside its
estimate, with the estimate's error per method, the max-batch searches, the cuda tests and the
step-time sections, rendered as `report.md` from the suite's `results.json` state. Rendered after
every change, so it also reads a part that is still running or was cut."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def compare(measured: dict, estimate: dict) -> list[dict]:
    est = {r["method"]: r for r in estimate.get("results", [])}
    rows = measured.get("results", [])
    full = next((r for r in rows if r["method"] == "full" and not r.get("error") and not r.get("oom")), None)
    out = []
    for r in rows:
        e, ok = est.get(r["method"], {}), not r.get("error") and not r.get("oom")
        row = {"method": r["method"], "status": "ok" if ok else ("oom" if r.get("oom") else "error")}
        for key in ("first_step_peak_bytes", "peak_bytes"):
            row[key], row[f"estimate_{key}"] = r.get(key), e.get(key)
            both = ok and r.get(key) and e.get(key) and not e.get("error")
            row[f"{key}_error_pct"] = round(100 * (e[key] / r[key] - 1), 2) if both else None
        row["tokens_per_s"] = r.get("tokens_per_s")
        if ok and full:
            row["memory_x_full"] = round(full["first_step_peak_bytes"] / r["first_step_peak_bytes"], 3)
            if r.get("tokens_per_s") and full.get("tokens_per_s"):
                row["tokens_per_s_vs_full"] = round(r["tokens_per_s"] / full["tokens_per_s"], 3)
        out.append(row)
    return out


def fmt(x, spec: str = ".2f", scale: float = 1.0) -> str:
    return "—" if x is None else format(x / scale, spec)


def setting_table(mode: str, rows: list[dict]) -> list[str]:
    lines = [
        f"| method | {mode} 1st-step GiB | estimate GiB | error % | {mode} peak GiB | estimate GiB | error % "
        "| tokens/s | memory x full | tokens/s vs full |",
        "|---|" + "---:|" * 9,
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['status']} |" + " |" * 8)
            continue
        lines.append(
            f"| {r['method']} | {fmt(r['first_step_peak_bytes'], scale=GIB)} "
            f"| {fmt(r['estimate_first_step_peak_bytes'], scale=GIB)} | {fmt(r['first_step_peak_bytes_error_pct'], '+.1f')} "
            f"| {fmt(r['peak_bytes'], scale=GIB)} | {fmt(r['estimate_peak_bytes'], scale=GIB)} "
            f"| {fmt(r['peak_bytes_error_pct'], '+.1f')} | {fmt(r['tokens_per_s'], ',.0f')} "
            f"| {fmt(r.get('memory_x_full'))}x | {fmt(r.get('tokens_per_s_vs_full'))} |"
        )
    return lines


def maxbatch_table(entry: dict) -> list[str]:
    """The max-batch part: each method's answer per search, B fits / B+1 out of memory, same twice."""
    runs = entry.get("runs", [])
    answers = {}
    for i, job in enumerate(runs):
        for r in job.get("max_batch", []):
            answers.setdefault(r["method"], {})[i] = r
    full = next((r[0]["max_batch_size"] for m, r in answers.items() if m == "full" and 0 in r), None)
    heads = " | ".join(f"search {i + 1}" for i in range(len(runs)))
    lines = [
        f"| method | {heads} | x full | B fits, B+1 OOM | same twice | probes |",
        "|---|" + "---:|" * (len(runs) + 4),
    ]
    for method, by_run in answers.items():
        check = entry.get("checks", {}).get(method, {})
        cells = " | ".join(
            (f"{by_run[i]['max_batch_size']}" + (" (upper)" if by_run[i].get("capped_at_upper") else ""))
            if i in by_run
            else "—"
            for i in range(len(runs))
        )
        first = next(iter(by_run.values()))["max_batch_size"]
        ratio = fmt(first / full) + "x" if full else "—"
        exact = "yes" if check.get("exact") and all(check["exact"]) else "no"
        same = "yes" if check.get("same") else ("—" if len(check.get("answers", [])) < 2 else "**no**")
        probes = "/".join(str(len(r.get("probes", []))) for r in by_run.values())
        lines.append(f"| {method} | {cells} | {ratio} | {exact} | {same} | {probes} |")
    return lines


def job_notes(job: dict, label: str) -> list[str]:
    notes = [f"- {label}: {job.get('status')}" + (f", {len(job['errors'])} error(s)" if job.get("errors") else "")]
    return notes + [f"  - `{e.splitlines()[0][:300]}`" for e in job.get("errors", [])[:10]]


def header(state: dict, args) -> list[str]:
    env, s = state["environment"], state["suite"]
    return [
        f"# GPU suite: {env.get('device_name')}",
        "",
        f"- torch {env.get('torch_version')}, transformers {env.get('transformers_version')}, "
        f"peft {env.get('peft_version')}, CUDA {env.get('cuda_version', '—')}, driver {env.get('driver', '—')}",
        f"- git revision {env.get('git_revision')}, {s['date']}, host {env.get('host')}",
        f"- `{' '.join(s['argv'])}`: budget {args.budget_s:g} s, {s['elapsed_s']:.0f} s so far",
        f"- measured mode `{args.device}`; estimate mode with estimate_device {s['estimate_device']}, "
        f"target {s['target_gib']:.2f} GiB; batch {args.batch}, length {args.seq_len}",
    ]


def tests_section(t: dict) -> list[str]:
    counts = ", ".join(f"{n} {k}" for k, n in t["counts"].items()) or "no test reported"
    of = f" of {t['selected']} selected" if t.get("selected") is not None else ""
    state = "cut at the part's end" if t.get("cut") else f"exit {t['returncode']}"
    lines = ["## cuda-marked tests", "", f"`{' '.join(t['command'])}`: {state}, {counts}{of} ({t['seconds']} s)"]
    failed = [name for name, outcome in t.get("outcomes", {}).items() if outcome in ("failed", "error")]
    lines += [""] + [f"- {outcome}: `{name}`" for name in failed for outcome in [t["outcomes"][name]]]
    return lines + ["", "```", t["tail"], "```"]


def step_time_section(name: str, result: dict, seconds: float) -> list[str]:
    if "error" in result:
        return [f"## step time, {name}", "", f"{result['error']}:", "", "```", result.get("tail", ""), "```"]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from step_time import report  # imports torch: only where a step-time part ran

    cut = " — cut at the part's end: the rounds timed so far" if result.get("cut") else ""
    lines = [f"## step time, {name} ({seconds:.0f} s){cut}", "", report(result)]
    if result.get("exit"):
        lines += ["", f"step_time.py exited {result['exit']}:", "", "```", result.get("tail", ""), "```"]
    return lines


def section(state: dict, args, name: str) -> list[str]:
    s, mode = state["suite"], args.device
    seconds = s["timings"].get(name, 0)
    if name == "tests":
        return tests_section(state["cuda_tests"]) if state["cuda_tests"] else ["## cuda-marked tests", "", "none ran"]
    if name in state["step_time"]:
        return step_time_section(name, state["step_time"][name], seconds)
    if name in state["jobs"]:
        pair = state["jobs"][name]
        lines = [f"## {name} ({seconds:.0f} s)", ""] + setting_table(mode, state["comparison"].get(name, []))
        lines += [""] + job_notes(pair[mode], mode) + job_notes(pair["estimate"], "estimate")
        for label, job in ((mode, pair[mode]), ("estimate", pair["estimate"])):
            if job.get("not_run"):
                lines.append(f"- {label}: not run (cut at the part's end): {', '.join(job['not_run'])}")
        ref = s["reference_files"].get(name)
        return lines + ([f"- reference file: `{ref}`"] if ref else [])
    if name not in state["max_batch"]:
        return [f"## {name}", "", "nothing recorded"]
    entry = state["max_batch"][name]
    lines = [f"## max batch, {name}, {mode} ({seconds:.0f} s)", ""] + maxbatch_table(entry)
    lines.append("")
    for i, job in enumerate(entry.get("runs", [])):
        lines += job_notes(job, f"search {i + 1}")
        if job.get("not_run"):
            lines.append(f"  - not run (cut at the part's end): {', '.join(job['not_run'])}")
    return lines


def render(state: dict, args) -> str:
    names = (["tests"] if state["cuda_tests"] else []) + list(state["jobs"]) + list(state["max_batch"])
    names += list(state["step_time"])
    lines = header(state, args)
    for name in names:
        lines += [""] + section(state, args, name)
    if state["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {p['part']}: {p['reason']}" for p in state["skipped"]]
    return "\n".join(lines) + "\n"
