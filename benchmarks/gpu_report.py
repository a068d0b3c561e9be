"""The GPU suite's report (benchmarks/gpu_suite.py): each Table-2 setting measured beside its
estimate, with the estimate's error per method, the max-batch tables and the step-time sections,
rendered as `report.md` from the suite's `results.json` state."""

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


def maxbatch_table(job: dict) -> list[str]:
    rows = job.get("max_batch", [])
    full = next((r["max_batch_size"] for r in rows if r["method"] == "full"), None)
    lines = ["| method | max batch | x full | capped at upper | probes |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = fmt(r["max_batch_size"] / full) + "x" if full else "—"
        capped = "yes" if r.get("capped_at_upper") else "no"
        lines.append(f"| {r['method']} | {r['max_batch_size']} | {ratio} | {capped} | {len(r.get('probes', []))} |")
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


def section(state: dict, args, name: str) -> list[str]:
    s, mode = state["suite"], args.device
    if name == "tests":
        t = state["cuda_tests"]
        counts = ", ".join(f"{n} {k}" for k, n in t["counts"].items()) or "no summary line"
        line = f"`{' '.join(t['command'][1:])}`: exit {t['returncode']}, {counts} ({t['seconds']} s)"
        return ["## cuda-marked tests", "", line, "", "```", t["tail"], "```"]
    if name in state["step_time"]:
        result = state["step_time"][name]
        if "error" in result:
            return [f"## step time, {name}", "", f"{result['error']}:", "", "```", result["tail"], "```"]
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from step_time import report  # imports torch: only where a step-time part ran

        return [f"## step time, {name} ({s['timings'].get(name, 0):.0f} s)", "", report(result)]
    if name in state["jobs"]:
        pair = state["jobs"][name]
        lines = [f"## {name} ({s['timings'].get(name, 0):.0f} s)", ""] + setting_table(mode, state["comparison"][name])
        lines += [""] + job_notes(pair[mode], mode) + job_notes(pair["estimate"], "estimate")
        ref = s["reference_files"].get(name)
        return lines + ([f"- reference file: `{ref}`"] if ref else [])
    job = state["max_batch"][name]
    lines = [f"## max batch, {name}, {mode} ({s['timings'].get(name, 0):.0f} s)", ""] + maxbatch_table(job)
    return lines + [""] + job_notes(job, mode)


def render(state: dict, args) -> str:
    names = (["tests"] if state["cuda_tests"] else []) + list(state["jobs"]) + list(state["step_time"])
    names += list(state["max_batch"])
    lines = header(state, args)
    for name in names:
        lines += [""] + section(state, args, name)
    if state["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {p['part']}: {p['reason']}" for p in state["skipped"]]
    return "\n".join(lines) + "\n"
