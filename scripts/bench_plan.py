"""How fast `moecli plan` is on a Qwen3.6-35B-A3B-shaped file: the header read, the planner, and
the whole command (Python start-up and imports included), medians over repeated runs.

    python scripts/bench_plan.py                       # this checkout
    python scripts/bench_plan.py --runs 9 --tree /path/to/other/checkout --tree .

With several --tree, the commands alternate between the checkouts run by run (PYTHONPATH=TREE), so
that noise on the machine hits all of them alike. Speed is measured here, not asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _file(directory: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from moecli.synth import build_recipe

    recipe = build_recipe("qwen3.6-35b-a3b", "Q4_K_M")
    path = directory / "qwen36-q4km.gguf"
    recipe.write(path, fill="sparse")  # real shapes and header, no data on disk
    return path


def _in_process(path: Path, runs: int) -> None:
    from moecli import machine, planner
    from moecli.gguf import read_model

    read_model(path)  # the page cache
    reads, plans = [], []
    for _ in range(runs):
        start = time.perf_counter()
        facts = read_model(path)
        reads.append(time.perf_counter() - start)
        profile = machine.load_profile("gtx1060-6gb", measure_bandwidth=False)
        start = time.perf_counter()
        planner.plan(facts, profile)
        plans.append(time.perf_counter() - start)
    print(f"header read: median {statistics.median(reads) * 1e3:.0f} ms ({len(facts.tensors)} tensors, "
          f"{facts.n_vocab:,}-token vocabulary); planner.plan: median {statistics.median(plans) * 1e3:.0f} ms")


def _command(trees: list[Path], path: Path, runs: int) -> None:
    """As an installed package runs: from compiled bytecode (pip writes it at install time), even
    where PYTHONDONTWRITEBYTECODE is set, as it is on the dev box (then every run would compile
    every module from source, and a larger package would look slower for that alone)."""
    env0 = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for tree in trees:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "moecli")], env=env0, check=True,
                       stdout=subprocess.DEVNULL)
    times: dict[Path, list[float]] = {t: [] for t in trees}
    for _ in range(runs):
        for tree in trees:
            env = {**env0, "PYTHONPATH": str(tree)}
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "moecli", "plan", str(path), "--profile", "gtx1060-6gb"], env=env,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tree)
            times[tree].append(time.perf_counter() - start)
    for tree, seconds in times.items():
        print(f"moecli plan (PYTHONPATH={tree}): median {statistics.median(seconds):.3f} s of {runs} "
              f"(min {min(seconds):.3f}, max {max(seconds):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--tree", type=Path, action="append", help="a checkout to time (repeatable; default: this one)")
    args = parser.parse_args()
    trees = [t.resolve() for t in args.tree] if args.tree else [ROOT]
    with tempfile.TemporaryDirectory() as tmp:
        path = _file(Path(tmp))
        _in_process(path, args.runs)
        _command(trees, path, args.runs)


if __name__ == "__main__":
    main()
