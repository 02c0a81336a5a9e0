#!/usr/bin/env python3
"""How well the plan's calibration carries over: from a measurements file (what `moecli bench`
records), predict a model's tg and pp from the runs of the OTHER models only, with the first 1, 2,
... of them (in the order they were benched), and compare with what it measured.

    python scripts/calibration_error.py TARGET.gguf [--file measurements.json] [--counts 1,2,5]

TARGET is matched by file name; its own rows are the measured figure (the newest), never input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moecli import measurements, planner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help="the benched model's file name (or path)")
    ap.add_argument("--file", type=Path, default=None, help="measurements.json (default: moecli's own)")
    ap.add_argument("--counts", default="1,2,5", help="how many calibration models to use, e.g. 1,2,5")
    args = ap.parse_args()
    file = args.file or measurements.path()
    store = measurements._parse(file.read_text())
    name = Path(args.target).name
    rows = [m for m in store.measurements if m.n_depth == 0 and m.inputs]
    target = [m for m in rows if Path(m.model_path).name == name]
    if not target:
        raise SystemExit(f"{name}: not in {file}")
    inputs = planner.SpeedInputs.from_dict(target[-1].inputs)
    measured = {t: max((m for m in target if m.test == t), key=lambda m: m.when) for t in ("tg", "pp")}
    others = [m for m in rows if Path(m.model_path).name != name and m.machine == target[-1].machine]
    order = list(dict.fromkeys(Path(m.model_path).name for m in others))
    print(f"target {name}: measured tg{measured['tg'].n_gen} {measured['tg'].avg_ts:.3f} ± {measured['tg'].stddev_ts:.3f}, "
          f"pp{measured['pp'].n_prompt} {measured['pp'].avg_ts:.2f} ± {measured['pp'].stddev_ts:.2f} t/s")
    out = []
    for n in (int(c) for c in args.counts.split(",")):
        use = set(order[:n])
        samples = tuple(planner.SpeedSample(planner.SpeedInputs.from_dict(m.inputs), m.test, m.avg_ts, m.when,
                                            m.n_prompt or m.n_gen, m.stddev_ts / m.avg_ts) for m in others if Path(m.model_path).name in use)
        decode = planner.DecodeEstimate(None, None, None, inputs.decode_bytes, inputs.bandwidths, "")
        speed = planner.predict(inputs, decode, planner.Calibration(samples))
        line = {"calibration_models": sorted(use, key=order.index)}
        for fig, t in ((speed.decode, "tg"), (speed.prompt, "pp")):
            err = (fig.tokens_per_s / measured[t].avg_ts - 1) if fig.tokens_per_s else None
            line[t] = {"predicted": fig.tokens_per_s, "measured": measured[t].avg_ts, "error": err,
                       "kind": fig.kind, "terms": fig.terms}
            print(f"{len(use)} model(s) {'+'.join(line['calibration_models'])}: {t} predicted "
                  f"{fig.tokens_per_s or float('nan'):.3f} ({fig.kind}, {len(fig.terms)} terms), "
                  f"error {100 * err if err is not None else float('nan'):+.1f} %")
        out.append(line)
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
