"""What llama.cpp allocates for n_seq_max sequences (the server's slots): its compute buffer, output
buffer, KV cache and recurrent state per configuration, from dry runs on the CPU (no_alloc, as its
--fit measures: exact bytes, nothing allocated but the recurrent state), written as the test data
that tests/test_planner.py checks the planner's memory model against.

    python scripts/measure_slot_buffers.py                    # writes tests/data/slot_buffers.json
    python scripts/measure_slot_buffers.py --out /tmp/x.json --models qwen36-35b-a3b

Models: header fixtures with real shapes from tests/archspecs.py (sparse files: header and holes,
written to a temporary folder) and the demo model. The grid: n_seq_max 1, 2, 4, 8 x n_ctx 4096,
16384 x n_ubatch (= n_batch) 512, 2048 x kv_unified off/on with flash attention, and without flash
attention for the unified-off case. A few seconds on two cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

MODELS = ("qwen36-35b-a3b", "qwen3-30b-a3b", "gpt-oss-20b", "demo")
SEQS, CTXS, UBATCHES = (1, 2, 4, 8), (4096, 16384), (512, 2048)


def model_path(key: str, directory: Path) -> Path:
    """The file a row's `model` names: an archspecs fixture, or the demo model."""
    if key == "demo":
        from moecli.synth import ensure_demo_model

        return ensure_demo_model(directory)
    import archspecs

    return archspecs.SPECS[key]().write_for_llama_cpp(directory)


def measure(path: Path, n_seq: int, n_ctx: int, n_ubatch: int, kv_unified: bool, flash_attn: str) -> dict:
    from moecli.engine import dry_run
    from moecli.params import LlamaParams
    from moecli.units import MiB

    params = LlamaParams(n_ctx=n_ctx, n_batch=n_ubatch, n_ubatch=n_ubatch, n_gpu_layers=0, flash_attn=flash_attn,
                         n_threads=1)
    b = dry_run(path, params, n_seq_max=n_seq, kv_unified=kv_unified)
    return {
        "n_seq": n_seq, "n_ctx": n_ctx, "n_ubatch": n_ubatch, "kv_unified": kv_unified, "flash_attn": flash_attn,
        "compute": b.compute.get("CPU", 0),  # bytes (llama.cpp's memory breakdown: exact)
        "context": b.context.get("CPU", 0),  # bytes: KV cache + recurrent state (exact)
        "output_mib": round(b.output.get("CPU", 0) / MiB, 2),  # the load log's "output buffer size"
        "recurrent_mib": round(b.recurrent.get("CPU", 0) / MiB, 2),  # the log's llama_memory_recurrent size
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "slot_buffers.json")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    args = parser.parse_args()

    import llama_cpp

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            path = model_path(key, Path(tmp))
            grid = [(*c, "on") for c in itertools.product((False, True), CTXS, UBATCHES, SEQS)]
            grid += [(False, ctx, ub, n, "off") for ctx, ub, n in itertools.product(CTXS, UBATCHES, SEQS)]
            for kv_unified, n_ctx, n_ubatch, n_seq, fa in grid:
                rows.append({"model": key, **measure(path, n_seq, n_ctx, n_ubatch, kv_unified, fa)})
            print(f"{key}: {len(grid)} dry runs", file=sys.stderr)
    data = {
        "command": "python scripts/measure_slot_buffers.py" + (f" --models {' '.join(args.models)}"
                                                              if list(args.models) != list(MODELS) else ""),
        "llama_cpp_python": llama_cpp.__version__,
        "device": "CPU (n_gpu_layers 0), dry run (no_alloc)",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    head = json.dumps({k: v for k, v in data.items() if k != "rows"}, indent=1)[:-2]
    body = ",\n".join("  " + json.dumps(row) for row in rows)  # a row a line: diffs stay readable
    args.out.write_text(f'{head},\n "rows": [\n{body}\n ]\n}}\n')
    print(f"{len(rows)} rows -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
