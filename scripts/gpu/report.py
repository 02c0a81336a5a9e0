#!/usr/bin/env python3
"""The checks of issue 5 and the markdown page, from the results.json that compare.py writes.

    python scripts/gpu/report.py results.json                 # the page on stdout
    python scripts/gpu/report.py results.json --readme scripts/gpu/README.md
        (replaces what stands between the README's `<!-- results:begin -->` and `<!-- results:end -->`)

Pure functions of the results: a cut-off run's partial file renders too.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# What must hold (issue 5), as (name, threshold).
WRAPPER_DECODE = 0.97  # moecli bench vs llama-bench on identical flags, decode
FITTER_DECODE = 0.97  # moecli's plan vs llama.cpp's fitter at the same card budget
FITTER_PROMPT = 3.0
SWEEP_BOTH = 0.97  # moecli's plan vs the best --n-cpu-moe point under the budget, prompt and decode
NAIVE_DECODE = 2.5  # moecli's plan vs the naive layer split
PREDICT_SHARE = 0.03  # predicted GPU memory within 3 % ...
PREDICT_ABS = 128 * MiB  # ... or 128 MiB of the measured peak


def gib(n: float | None) -> str:
    return "–" if n is None else f"{n / GiB:.2f} GiB"


def mib(n: float | None) -> str:
    return "–" if n is None else f"{n / MiB:,.0f} MiB"


def speed(test: dict | None) -> str:
    return "–" if not test else f"{test['avg_ts']:.1f} ± {test['stddev_ts']:.1f}"


def ratio(a: dict | None, b: dict | None) -> tuple[float, float] | None:
    """a / b of two measurements (mean ± sd), with the standard deviation propagated."""
    if not a or not b or not b["avg_ts"]:
        return None
    r = a["avg_ts"] / b["avg_ts"]
    rel = math.hypot(a["stddev_ts"] / a["avg_ts"] if a["avg_ts"] else 0.0, b["stddev_ts"] / b["avg_ts"])
    return r, r * rel


def run_line(rec: dict) -> str:
    """One line for the log."""
    if rec.get("skipped"):
        return f"skipped: {rec['skipped']}"
    tests = rec.get("tests") or {}
    parts = [f"pp {speed(tests.get('pp'))}", f"tg {speed(tests.get('tg'))} t/s"]
    if rec.get("peak_gpu_bytes") is not None:
        parts.append(f"peak GPU {mib(rec['peak_gpu_bytes'])} (predicted {mib(rec.get('predicted_gpu_bytes'))})")
    parts.append(f"{rec.get('wall_s', 0):.0f} s (estimated {rec.get('estimate_s', 0):.0f})")
    if rec.get("error"):
        parts.append(f"ERROR {rec['error']}")
    return ", ".join(parts)


def _measured(rec: dict | None) -> bool:
    return bool(rec and rec.get("tests") and not rec.get("error"))


def groups(results: dict) -> list[str]:
    seen: list[str] = []
    for rec in results.get("runs", []):
        if rec["group"] != "memory" and rec["group"] not in seen:
            seen.append(rec["group"])
    return seen


def _by_kind(results: dict, group: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for rec in results.get("runs", []):
        if rec["group"] == group:
            out.setdefault(rec["kind"], []).append(rec)
    return out


def _check(criterion: str, where: str, value: tuple[float, float] | None, need: float, *, fmt: str = "{:.2f}×",
           ok: bool | None = None) -> dict:
    if value is None:
        return {"criterion": criterion, "where": where, "measured": "not measured", "needs": f"≥ {fmt.format(need)}",
                "verdict": "not measured"}
    passed = value[0] >= need if ok is None else ok
    return {"criterion": criterion, "where": where, "measured": f"{fmt.format(value[0])} ± {value[1]:.2f}",
            "needs": f"≥ {fmt.format(need)}", "verdict": "pass" if passed else "FAIL"}


def checks(results: dict) -> list[dict]:
    """Every criterion of issue 5 that the results can decide, one row per place it applies (a CPU
    smoke run's rows say so instead of passing or failing)."""
    rows = _checks(results)
    if results.get("mode") == "cpu-smoke":
        for row in rows:
            row["verdict"] = "n/a (CPU smoke)"
    return rows


def _checks(results: dict) -> list[dict]:
    rows = []
    for rec in results.get("runs", []):
        if rec["kind"] not in ("plan", "memory") or not _measured(rec):
            continue
        where = f"{gib(rec['budget_bytes'])} · ctx {rec['ctx']} · {_threads(rec['threads'])}"
        peak, predicted, budget = rec.get("peak_gpu_bytes"), rec.get("predicted_gpu_bytes"), rec["budget_bytes"]
        if peak is None:
            rows.append({"criterion": "planned load within its budget", "where": where, "measured": "no GPU",
                         "needs": f"≤ {gib(budget)}", "verdict": "not measured"})
            continue
        rows.append({"criterion": "planned load within its budget", "where": where, "measured": mib(peak),
                     "needs": f"≤ {mib(budget)}", "verdict": "pass" if peak <= budget else "FAIL"})
        if predicted is not None:
            err = predicted - peak
            allowed = max(PREDICT_SHARE * peak, PREDICT_ABS)
            rows.append({"criterion": "predicted GPU memory vs measured peak", "where": where,
                         "measured": f"{predicted / MiB:,.0f} vs {peak / MiB:,.0f} MiB ({err / MiB:+,.0f} MiB, "
                                     f"{100 * err / peak:+.1f} %)",
                         "needs": f"within {mib(allowed)}", "verdict": "pass" if abs(err) <= allowed else "FAIL"})
    for group in groups(results):
        kinds = _by_kind(results, group)
        first = lambda kind, kinds=kinds: next((r for r in kinds.get(kind, []) if _measured(r)), None)  # noqa: E731
        plan, plan_lb, fitter, naive = first("plan"), first("plan@lb"), first("fitter"), first("naive")
        t = lambda rec, test: (rec or {}).get("tests", {}).get(test)  # noqa: E731
        rows.append(_check("moecli bench vs llama-bench, same flags: decode", group,
                           ratio(t(plan, "tg"), t(plan_lb, "tg")), WRAPPER_DECODE))
        rows.append(_check("plan vs llama.cpp's fitter: decode (both by llama-bench)", group,
                           ratio(t(plan_lb, "tg"), t(fitter, "tg")), FITTER_DECODE))
        rows.append(_check("plan vs llama.cpp's fitter: prompt (both by llama-bench)", group,
                           ratio(t(plan_lb, "pp"), t(fitter, "pp")), FITTER_PROMPT))
        rows.append(_check("plan (moecli bench) vs fitter (llama-bench): decode", group,
                           ratio(t(plan, "tg"), t(fitter, "tg")), FITTER_DECODE))
        rows.append(_check("plan (moecli bench) vs fitter (llama-bench): prompt", group,
                           ratio(t(plan, "pp"), t(fitter, "pp")), FITTER_PROMPT))
        sweep = [r for r in kinds.get("sweep", []) if _measured(r) and r.get("under_budget") is not False]
        for test, name in (("tg", "decode"), ("pp", "prompt")):
            best = max(sweep, key=lambda r: t(r, test)["avg_ts"] if t(r, test) else 0.0, default=None)
            label = f"{group}, best: {best['label']}" if best else group
            rows.append(_check(f"plan vs best --n-cpu-moe point under the budget: {name}", label,
                               ratio(t(plan, test), t(best, test)), SWEEP_BOTH))
        rows.append(_check("plan vs naive layer split: decode (both by llama-bench)", group,
                           ratio(t(plan_lb, "tg"), t(naive, "tg")), NAIVE_DECODE))
    return rows


KIND_ORDER = ("plan", "plan@lb", "fitter", "cpu-moe", "naive", "sweep", "ceiling", "memory")


def _threads(n: int | str) -> str:
    return f"{n} thread" + ("" if str(n) == "1" else "s")


def _row_order(rec: dict) -> tuple:
    kind = KIND_ORDER.index(rec["kind"]) if rec["kind"] in KIND_ORDER else len(KIND_ORDER)
    return kind, rec.get("load_mode") or "", rec.get("sweep_n") or 0


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def checks_section(results: dict) -> str:
    rows = [[c["criterion"], c["where"], c["measured"], c["needs"], c["verdict"]] for c in checks(results)]
    lines = ["#### What must hold", "", *_table(["criterion", "where", "measured", "needs", "verdict"], rows)]
    missing = not_measured(results)
    if missing:  # poll.sh prints this section: what the lease did not cover is said where the checks are
        lines += ["", f"Not measured in this run ({len(missing)}): " + "; ".join(missing)]
    return "\n".join(lines)


def _flags(rec: dict) -> str:
    flags = rec.get("flags") or []
    return "`" + " ".join(flags) + "`" if flags else "(its plan)"


def render(results: dict) -> str:
    mode = results.get("mode", "?")
    smoke = mode == "cpu-smoke"
    out = [f"### Results: {mode} run, {results.get('started', '?')}"
           + (f", finished {results['finished']}" if results.get("finished") else " (not finished)"), ""]
    if smoke:
        out += ["CPU smoke run: the demo model on a CPU, to exercise the driver. Its figures say nothing about GPUs.", ""]
    m = results.get("machine", {})
    gpu = m.get("gpu") or {}
    model = results.get("model", {})
    bw = m.get("ram_bandwidth", {})
    build = next((r.get("build_commit") for r in results.get("runs", []) if r.get("build_commit")), None)
    rows = [
        ["GPU", f"{gpu.get('name', 'none')}, {gib(gpu.get('total_bytes'))}, driver {gpu.get('driver', '?')}, "
                f"compute capability {gpu.get('compute_capability', '?')}" if gpu else "none (NVML found no GPU)"],
        ["CPU", f"{m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs usable, {m.get('physical_cores', '?')} physical cores"],
        ["RAM", f"{gib(m.get('ram_bytes'))}; copy bandwidth (read + write) "
                + ", ".join(f"{v / 1e9:.1f} GB/s with {k} thread{'s' if k != '1' else ''}" for k, v in bw.items())],
        ["model", f"{model.get('name', '?')} ({model.get('arch', '?')}, {model.get('file_type', '?')}), "
                  f"{gib(model.get('bytes'))}, {model.get('n_layer', '?')} layers, {model.get('n_expert', '?')} experts"],
        ["llama.cpp", f"llama-bench build {build or '?'}"],
        ["settings", f"budget {gib(results.get('settings', {}).get('budget_bytes'))}, prompt "
                     f"{results.get('settings', {}).get('n_prompt')} / generation {results.get('settings', {}).get('n_gen')} "
                     f"tokens, {results.get('settings', {}).get('reps')} repetitions; elapsed {results.get('elapsed_s', 0) / 60:.1f} min"],
    ]
    if results.get("setup"):
        rows.append(["setup", "; ".join(results["setup"])])
    out += _table(["", ""], rows) + [""]

    out += [checks_section(results), ""]

    for group in groups(results):
        ctx, threads = group[1:].split("-t")
        pinned = any(r.get("pinned") for r in results["runs"] if r["group"] == group)
        out += [f"#### Context {int(ctx):,}, {_threads(threads)}" + (" (pinned with taskset)" if pinned else ""), ""]
        rows = []
        for rec in sorted((r for r in results["runs"] if r["group"] == group), key=_row_order):
            tests = rec.get("tests") or {}
            tg = tests.get("tg")
            bound = rec.get("decode_bound")
            eff = f"{tg['avg_ts'] / bound:.0%} of {bound:.0f}" if tg and bound else "–"
            peak = rec.get("peak_gpu_bytes")
            peak_text = mib(peak) + (" (over budget)" if rec.get("under_budget") is False else "")
            status = rec.get("skipped") or rec.get("error")
            rows.append([rec["label"], f"{rec['tool']} @ ctx {rec.get('predicted_ctx', rec['ctx'])}", _flags(rec),
                         mib(rec.get("predicted_gpu_bytes")),
                         f"{rec['llama_estimate_mib']:,} MiB" if rec.get("llama_estimate_mib") else "–",
                         status if status else peak_text, speed(tests.get("pp")), speed(tg), eff])
        out += _table(["configuration", "measured by", "flags", "GPU predicted (moecli)", "llama.cpp's estimate",
                       "GPU peak measured", "pp512 t/s", "tg128 t/s", "decode vs bound"], rows) + [""]

    memory = sorted((r for r in results.get("runs", []) if r["kind"] in ("plan", "memory")),
                    key=lambda r: (r["ctx"], r.get("budget_bytes") or 0, -r["threads"]))
    if memory:
        out += ["#### moecli's plans: predicted against measured GPU memory", ""]
        rows = []
        for rec in memory:
            peak, pred = rec.get("peak_gpu_bytes"), rec.get("predicted_gpu_bytes")
            err = f"{(pred - peak) / MiB:+,.0f} MiB ({100 * (pred - peak) / peak:+.1f} %)" if peak and pred else "–"
            rows.append([gib(rec.get("budget_bytes")), f"{rec['ctx']:,}", rec["threads"], _flags(rec), mib(pred),
                         rec.get("skipped") or rec.get("error") or mib(peak), err])
        out += _table(["budget", "context", "threads", "plan", "predicted", "measured peak", "predicted − measured"], rows)
        out += [""]

    fitter = results.get("fitter", {})
    if fitter:
        out += ["#### llama.cpp's fitter as a 6 GiB card's owner gets it", ""]
        rows = [[f"{int(ctx):,}", mib(f.get("free_bytes")), f"{f.get('fit_target_mib', '–')} MiB",
                 "`" + f.get("stdout", "").splitlines()[-1] + "`" if f.get("stdout") else f.get("error", "–")]
                for ctx, f in fitter.items()]
        out += _table(["context", "free here", "--fit-target", "its flags"], rows) + [""]

    notes = list(results.get("notes", []))
    notes += [f"{r['id']}: moecli bench loaded `{' '.join(r.get('moecli_llama_args') or [])}`, not what `moecli plan` "
              f"printed (`{' '.join(r['plan_llama_args'])}`)"
              for r in results.get("runs", []) if r.get("same_as_moecli_plan") is False]
    notes += [f"{r['id']}: {r['error']}" + (f" — {_last_line(r['stderr_tail'])}" if r.get("stderr_tail") else "")
              for r in results.get("runs", []) if r.get("error")]
    missing = not_measured(results)
    if missing:
        notes.append(f"not measured ({len(missing)}): " + "; ".join(missing))
    if notes:
        out += ["#### Notes", ""] + [f"- {n}" for n in notes] + [""]

    out += ["<details><summary>Every command</summary>", "", "```"]
    out += [f"{r['id']}: {r['command']}" for r in results.get("runs", []) if r.get("command")]
    out += [f"plan {k}: {p['command']}" for k, p in results.get("plans", {}).items()]
    out += [f"fitter ctx {k}: {f['command']}" for k, f in fitter.items() if f.get("command")]
    out += ["```", "", "</details>", ""]
    return "\n".join(out)


def not_measured(results: dict) -> list[str]:
    """Every run the matrix planned that has no measurement, and why: skipped for time, cut off
    while running (the lease ended), or still queued when the results were last written."""
    out = [f"{r['id']} (p{r.get('priority', '?')}: {r['skipped']})" for r in results.get("runs", []) if r.get("skipped")]
    running = results.get("running")
    if running and not results.get("finished"):
        out.append(f"{running['id']} (cut off while running)")
    out += [f"{r['id']} (p{r['priority']}: not reached, ~{r['estimate_s']:.0f} s)" for r in results.get("pending", [])]
    return out


def _last_line(text: str) -> str:
    """The line of a tool's stderr that says what went wrong (moecli: `error: ...`; else the last)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("error:")), lines[-1] if lines else "")


def update_readme(readme: Path, page: str) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{page}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    import json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path)
    ap.add_argument("--readme", type=Path, help="write the page into this README's results section")
    args = ap.parse_args(argv)
    page = render(json.loads(args.results.read_text()))
    if args.readme:
        update_readme(args.readme, page)
    else:
        print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
