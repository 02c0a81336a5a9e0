#!/usr/bin/env bash
# The GPU proof of issue 5, end to end, ON the lent machine, with only what the call carries
# (.carry/ from scripts/gpu/prepare.sh) and the project. start.sh starts it detached; poll.sh
# copies what it writes to $OUT. Every step is skipped when a previous run on the same machine
# already did it, so it can be started again after an interruption.
#
#   1. a snapshot of the project (moecli, configs, scripts) outside the synced working tree
#   2. the carried wheels installed into a target folder (--no-index: nothing is downloaded)
#   3. one CMake build of the vendored llama.cpp with CUDA for the card found: llama-bench,
#      llama-fit-params, and the libraries the Python binding loads (copied into llama_cpp/lib)
#   4. the full-size random-weight Qwen3.6-35B-A3B Q4_K_M GGUF (scripts/make_model.py, 19.7 GiB)
#   5. scripts/gpu/compare.py: the runs, results.json and results.md
#
# Environment: MODE=full|quick|cpu-smoke (default full), RUN_BUDGET_S (seconds from the start that
# the whole run may take, default 1500: the device tool gives a session 30 minutes in all,
# machine start included),
# WORK (default /tmp/moecli-gpu), PYTHON (default python3), JOBS (default: all cores),
# CUDA=auto|1|0 (default auto: on where nvidia-smi sees a GPU), REPS (default 3).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${WORK:-/tmp/moecli-gpu}
mode=${MODE:-full}
budget_s=${RUN_BUDGET_S:-1500}
py=${PYTHON:-python3}
jobs=${JOBS:-$(nproc)}
reps=${REPS:-3}
started=$(date +%s)
out=$work/out
mkdir -p "$out"
rm -f "$out/DONE" "$out/results.json" "$out/results.md" "$out/timings.txt" "$out/build.log"
case $mode in full|quick|cpu-smoke) ;; *) echo "MODE=$mode: expected full, quick or cpu-smoke" >&2; exit 2 ;; esac

log() { printf '[%s +%ss] %s\n' "$(date -u +%H:%M:%S)" "$(( $(date +%s) - started ))" "$*"; }
step() { step_name=$1; step_started=$(date +%s); echo "$1" > "$out/STEP"; log "== $1"; }
step_done() { echo "$step_name: $(( $(date +%s) - step_started )) s${1:+ ($1)}" >> "$out/timings.txt"; }
finish() { rc=$?; log "run.sh ends with exit code $rc"; echo "$rc" > "$out/DONE"; }
trap finish EXIT

# --- 1. snapshot ------------------------------------------------------------------------------
step "snapshot of the project"
[ -f "$repo/.carry/MANIFEST" ] || { echo "no .carry/: run scripts/gpu/prepare.sh where PyPI is reachable, and name .carry in the call's carry" >&2; exit 1; }
rm -rf "$work/src"
mkdir -p "$work/src"
cp -a "$repo/moecli" "$repo/configs" "$repo/scripts" "$repo/pyproject.toml" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
stamp=$(sha256sum "$repo/.carry/MANIFEST" | cut -c1-16)
step_done

# --- the machine --------------------------------------------------------------------------------
[ -d /usr/local/cuda/bin ] && export PATH=$PATH:/usr/local/cuda/bin
cuda=${CUDA:-auto}
if [ "$cuda" = auto ]; then
  if [ "$mode" != cpu-smoke ] && nvidia-smi -L > /dev/null 2>&1; then cuda=1; else cuda=0; fi
fi
{
  date -u; uname -a
  nvidia-smi 2>&1 || true
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,compute_cap,clocks.max.memory --format=csv 2>&1 || true
  lscpu 2>&1 || true
  free -g; df -h "$work" /tmp /root 2>/dev/null || true
  "$py" --version; cmake --version | head -1; command -v nvcc > /dev/null && nvcc --version | tail -2
  head -2 "$repo/.carry/MANIFEST"
} > "$out/machine.txt" 2>&1 || true

# --- 2. wheels ----------------------------------------------------------------------------------
step "install the carried wheels"
site=$work/site
if [ "$(cat "$site/.stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$site"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$repo"/.carry/wheels/*.whl
  echo "$stamp" > "$site/.stamp"
fi
step_done

# --- 3. build -----------------------------------------------------------------------------------
step "build llama.cpp (CUDA=$cuda) and the Python binding's libraries"
lcp=$work/lcp
build=$lcp/vendor/llama.cpp/build
if [ "$(cat "$lcp/.stamp" 2>/dev/null)" != "$stamp-cuda$cuda" ]; then
  rm -rf "$lcp"
  tar xzf "$repo/.carry/lcp.tgz" -C "$work"
  # the H100 runs (moecli/planner/__init__.py): configure 4-6 s, build 275-357 s with -j 16 on the H100 machine
  flags=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
         -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
         -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=ON)
  if [ "$cuda" = 1 ]; then
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
    flags+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${arch:-native}")
    log "CUDA architecture ${arch:-native}"
  fi
  command -v ninja > /dev/null && flags+=(-G Ninja)
  cmake -S "$lcp/vendor/llama.cpp" -B "$build" "${flags[@]}" >> "$out/build.log" 2>&1
  cmake --build "$build" -j "$jobs" --target llama-bench llama-fit-params llama ggml >> "$out/build.log" 2>&1 \
    || { tail -40 "$out/build.log" >&2; exit 1; }
  # llama_cpp/_ggml.py and llama_cpp.py load their libraries from llama_cpp/lib only
  mkdir -p "$lcp/llama_cpp/lib"
  find "$build" -name 'lib*.so*' -exec cp -a {} "$lcp/llama_cpp/lib/" \;
  echo "$stamp-cuda$cuda" > "$lcp/.stamp"
fi
export PYTHONPATH=$work/src:$lcp:$site MOECLI_HOME=$work/home PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NO_COLOR=1
offload=$("$py" -c "import llama_cpp; print(llama_cpp.llama_supports_gpu_offload())")
log "llama_cpp $("$py" -c 'import llama_cpp; print(llama_cpp.__version__)') from $lcp, GPU offload: $offload"
if [ "$cuda" = 1 ] && [ "$offload" != True ]; then echo "the CUDA build does not offload" >&2; exit 1; fi
"$py" -m moecli --version
step_done "$(cat "$lcp/VENDORED_LLAMA_CPP_COMMIT" 2>/dev/null || echo '?')"

# --- 4. the model -------------------------------------------------------------------------------
args=(--llama-bench "$build/bin/llama-bench" --fit-params "$build/bin/llama-fit-params" --out "$out" --reps "$reps"
      --deadline "$(( started + budget_s - 45 ))")
if [ "$mode" = cpu-smoke ]; then
  args+=(--cpu-smoke)
else
  step "write the full-size model"
  name=qwen3.6-35b-a3b-q4km-random.gguf
  need=$(( 22 * 1024 * 1024 * 1024 ))  # 19.7 GiB and room to spare
  model=
  for dir in ${MODEL_DIR:-} "$work" /root /var/tmp; do  # an earlier run's file first
    [ -f "$dir/$name" ] && { model=$dir/$name; break; }
  done
  if [ -z "$model" ]; then
    for dir in ${MODEL_DIR:-} "$work" /root /var/tmp; do
      mkdir -p "$dir" 2> /dev/null || continue
      if [ "$(df --output=avail -B1 "$dir" | tail -1)" -gt "$need" ]; then model=$dir/$name; break; fi
    done
    [ -n "$model" ] || { echo "no folder with 22 GiB free for the model" >&2; df -h >&2; exit 1; }
    "$py" "$work/src/scripts/make_model.py" --preset qwen3.6-35b-a3b --quant Q4_K_M --fill random "$model"
  fi
  args+=(--model "$model")
  [ "$mode" = quick ] && args+=(--quick)
  step_done "$model"
fi

# --- 5. the comparison ---------------------------------------------------------------------------
step "compare ($mode)"
"$py" "$work/src/scripts/gpu/compare.py" "${args[@]}"
step_done
log "results: $out/results.json, $out/results.md"
