#!/usr/bin/env bash
# The GPU proof (issues 5 and 9), end to end, ON the lent machine, with only what the call carries
# (.carry/ from scripts/gpu/prepare.sh) and the project. start.sh starts it detached; poll.sh
# copies what it writes to $OUT. Every step is skipped when a previous run on the same machine
# already did it, so it can be started again after an interruption.
#
#   1. a snapshot of the project (moecli, configs, scripts) outside the synced working tree
#   2. the carried wheels installed into a target folder (--no-index: nothing is downloaded)
#   3. in the background from here on: the full-size random-weight Qwen3.6-35B-A3B Q4_K_M GGUF
#      (scripts/make_model.py, 19.7 GiB), in /dev/shm when RAM allows (nothing to fsync), else on disk
#   4. llama.cpp with CUDA: the build carried in .carry/prebuilt.tar.xz (scripts/gpu/build_cuda.sh,
#      made on the CPU machine for sm_90 / CUDA 13) when it is there and sees the GPU, with the
#      CPU backend rebuilt here for this CPU (GGML_NATIVE, beside the model: 54 s on 2 cores in the
#      CPU rehearsal of this route, scripts/gpu/README.md); else one CMake build of the vendored
#      llama.cpp for the card found (the device route: 275-357 s in the H100 runs
#      (moecli/planner/__init__.py))
#   5. scripts/gpu/compare.py: the runs, results.json and results.md
#
# Environment: MODE=full|quick|cpu-smoke (default full); RUN_BUDGET_S (seconds from the start by
# which the last run must have ended, default 700: the device tool gives a session 15 minutes in
# all, machine start included; poll.sh's RUN_END_IN moves it once the lease's end is known);
# WORK (default /tmp/moecli-gpu), PYTHON (default python3), JOBS (default: all cores),
# CUDA=auto|1|0 (default auto: on where nvidia-smi sees a GPU), PREBUILT=auto|0|force (0: build
# here even when a carried build is there; force: use it without a GPU, to rehearse this route on a
# CPU machine), REPS (default 3).
set -euo pipefail
repo=${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}  # start.sh runs a copy of this file from $WORK
work=${WORK:-/tmp/moecli-gpu}
mode=${MODE:-full}
budget_s=${RUN_BUDGET_S:-700}
[ "$mode" = cpu-smoke ] && budget_s=${RUN_BUDGET_S:-7200}  # no lease; the CPU build took 653 s on 2 cores (the CPU smoke run, scripts/gpu/README.md)
py=${PYTHON:-python3}
jobs=${JOBS:-$(nproc)}
reps=${REPS:-3}
started=$(date +%s)
out=$work/out
mkdir -p "$out"
rm -f "$out/DONE" "$out/results.json" "$out/results.md" "$out/timings.txt" "$out/build.log" "$work/deadline"
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
stamp=$(grep -v "^prepared " "$repo/.carry/MANIFEST" | sha256sum | cut -c1-16)  # what was carried, not when
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

# --- 3. the model, written in the background while llama.cpp is unpacked or built -----------------
model=
model_pid=
if [ "$mode" != cpu-smoke ]; then
  name=qwen3.6-35b-a3b-q4km-random.gguf
  need=$(( 22 * 1024 * 1024 * 1024 ))  # 19.7 GiB and room to spare
  # /dev/shm (memory: nothing written back or fsynced) only with RAM to spare: the file counts
  # against MemAvailable there, which moecli plan reads to choose -lm none (15 GiB of experts in RAM)
  avail_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
  shm=
  [ "${avail_kib:-0}" -gt $(( 80 * 1024 * 1024 )) ] && shm=/dev/shm
  dirs=(${MODEL_DIR:-} $shm "$work" /root /var/tmp)
  for dir in "${dirs[@]}"; do  # an earlier run's file first
    [ -f "$dir/$name" ] && { model=$dir/$name; break; }
  done
  if [ -z "$model" ]; then
    for dir in "${dirs[@]}"; do
      mkdir -p "$dir" 2> /dev/null || continue
      if [ "$(df --output=avail -B1 "$dir" | tail -1)" -gt "$need" ]; then model=$dir/$name; break; fi
    done
    [ -n "$model" ] || { echo "no folder with 22 GiB free for the model" >&2; df -h >&2; exit 1; }
    log "writing the model to $model (in the background)"
    model_started=$(date +%s)
    # random weights, not zeros or holes: a zero router gives every token the same experts, which
    # makes batched expert matmuls unrealistically dense (scripts/gpu/README.md, "the model")
    PYTHONPATH=$work/src:$site "$py" "$work/src/scripts/make_model.py" --preset qwen3.6-35b-a3b --quant Q4_K_M \
      --fill random "$model" > "$out/model.log" 2>&1 &
    model_pid=$!
  fi
fi

# --- 4. llama.cpp -------------------------------------------------------------------------------
lcp=$work/lcp
if [ "$(cat "$lcp/.stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$lcp"
  tar xzf "$repo/.carry/lcp.tgz" -C "$work"
  echo "$stamp" > "$lcp/.stamp"
fi
src=$lcp/vendor/llama.cpp
base_flags=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
            -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
            -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF)
command -v ninja > /dev/null && base_flags+=(-G Ninja)
bin=
route=
cpu_pid=

find_cublas() {  # the machine's own libcublas.so.13 (its CUDA toolkit, or the nvidia-cublas wheel)
  local f  # e.g. /opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib: 9 levels below /opt
  f=$(ldconfig -p 2>/dev/null | awk '/libcublas\.so\.13 / {print $NF; exit}')
  [ -n "$f" ] || f=$("$py" -c 'import glob, nvidia.cu13 as m; print(glob.glob(m.__path__[0] + "/lib/libcublas.so.13*")[0])' 2>/dev/null)
  [ -n "$f" ] || f=$(find /usr/local/cuda/lib64 /usr/local/cuda/targets /usr/local/cuda-13*/ /opt /usr/lib \
                       /usr/local/lib -maxdepth 10 -name 'libcublas.so.13*' -print -quit 2>/dev/null)
  [ -n "$f" ] && dirname "$f"
}

prebuilt=${PREBUILT:-auto}
if { [ "$cuda" = 1 ] || [ "$prebuilt" = force ]; } && [ "$prebuilt" != 0 ] && [ -f "$repo/.carry/prebuilt.tar.xz" ]; then
  step "llama.cpp: the carried CUDA build"
  pre=$work/prebuilt
  if [ "$(cat "$pre/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$pre"
    if command -v xz > /dev/null; then xz -dc "$repo/.carry/prebuilt.tar.xz" | tar xf - -C "$work"
    else "$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
           "$repo/.carry/prebuilt.tar.xz" "$work"; fi
    cp -a "$pre/lib/libggml-cpu.so.0."* "$pre/" 2>/dev/null || true  # the portable CPU backend, kept aside
    echo "$stamp" > "$pre/.stamp"
  fi
  head -4 "$pre/BUILDINFO" 2> /dev/null || true  # what was carried: commit, compiler, flags, build time
  cublas_dir=$(find_cublas || true)
  log "cuBLAS: ${cublas_dir:-not found}"
  ld_before=${LD_LIBRARY_PATH:-}
  export LD_LIBRARY_PATH=$pre/lib${cublas_dir:+:$cublas_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # PREBUILT=force: the CPU rehearsal of this route (MODE=cpu-smoke) with a carried CPU-only build
  if "$pre/bin/llama-bench" --list-devices > "$out/devices.txt" 2>&1 \
     && { grep -q CUDA0 "$out/devices.txt" || [ "$prebuilt" = force ]; }; then
    bin=$pre/bin
    route=carried
    cat "$out/devices.txt"
    # the CPU backend for this CPU, beside the model's writing (its libggml-base ABI is the carried one's)
    ( cmake -S "$src" -B "$work/build-cpu" "${base_flags[@]}" -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
      && cmake --build "$work/build-cpu" -j "$jobs" --target ggml-cpu ) > "$out/build.log" 2>&1 &
    cpu_pid=$!
  else
    log "the carried build does not see the GPU (devices.txt below): building here instead"
    cat "$out/devices.txt" >&2
    export LD_LIBRARY_PATH=$ld_before  # it would come before the new build's own RUNPATH
  fi
  step_done "${route:-unusable}"
fi
if [ -z "$bin" ]; then
  step "llama.cpp: build here (CUDA=$cuda)"
  build=$src/build
  if [ "$(cat "$build/.stamp" 2>/dev/null)" != "$stamp-cuda$cuda" ]; then
    # the H100 runs (moecli/planner/__init__.py): configure 4-6 s, build 275-357 s with -j 16
    flags=("${base_flags[@]}" -DGGML_NATIVE=ON)
    if [ "$cuda" = 1 ]; then
      arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
      # one real architecture, no PTX; FlashAttention for the default KV types only; no NCCL (one GPU)
      archs=native
      [ -n "$arch" ] && archs=$arch-real
      flags+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$archs" -DGGML_CUDA_FA_ALL_QUANTS=OFF -DGGML_CUDA_NCCL=OFF)
      log "CUDA architecture ${arch:-native}"
    fi
    cmake -S "$src" -B "$build" "${flags[@]}" >> "$out/build.log" 2>&1
    cmake --build "$build" -j "$jobs" --target llama-bench llama-fit-params llama ggml >> "$out/build.log" 2>&1 \
      || { tail -40 "$out/build.log" >&2; exit 1; }
    echo "$stamp-cuda$cuda" > "$build/.stamp"
  fi
  bin=$build/bin
  route=built-here
  step_done "$route"
fi

link_libs() {  # llama_cpp/_ggml.py and llama_cpp.py load their libraries from llama_cpp/lib only
  rm -rf "$lcp/llama_cpp/lib"
  mkdir -p "$lcp/llama_cpp/lib"
  local libdir=$bin
  [ "$route" = carried ] && libdir=$pre/lib
  find "$libdir" -maxdepth 1 -name 'lib*.so*' -exec cp -a {} "$lcp/llama_cpp/lib/" \;
}
link_libs
export PYTHONPATH=$work/src:$lcp:$site MOECLI_HOME=$work/home PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NO_COLOR=1
check_offload() {
  offload=$("$py" -c "import llama_cpp; print(llama_cpp.llama_supports_gpu_offload())")
  log "llama_cpp $("$py" -c 'import llama_cpp; print(llama_cpp.__version__)') from $lcp ($route), GPU offload: $offload"
  [ "$cuda" != 1 ] || [ "$offload" = True ]
}
check_offload || { echo "the CUDA build does not offload" >&2; exit 1; }
"$py" -m moecli --version

if [ -n "$cpu_pid" ]; then
  step "the CPU backend for this CPU"
  if wait "$cpu_pid" && cp -a "$work/build-cpu/bin/libggml-cpu.so"* "$pre/lib/" && link_libs && check_offload \
     && "$bin/llama-bench" --list-devices > /dev/null 2>&1; then
    step_done "native"
  else
    log "the native CPU backend failed (build.log): the carried x86-64-v3 one stays"
    cp -a "$pre"/libggml-cpu.so.0.* "$pre/lib/" && link_libs
    step_done "portable (x86-64-v3)"
  fi
fi

args=(--llama-bench "$bin/llama-bench" --fit-params "$bin/llama-fit-params" --out "$out" --reps "$reps"
      --deadline "$(( started + budget_s ))" --deadline-file "$work/deadline")
if [ "$mode" = cpu-smoke ]; then
  args+=(--cpu-smoke)
else
  if [ -n "$model_pid" ]; then
    step "the model (written since +$(( model_started - started )) s)"
    wait "$model_pid" || { tail -5 "$out/model.log" >&2; rm -f "$model"; exit 1; }
    tail -c 300 "$out/model.log" | tr '\r' '\n' | tail -1
    step_done "$model, $(( $(date +%s) - model_started )) s in all"
  fi
  args+=(--model "$model")
  [ "$mode" = quick ] && args+=(--quick)
fi

# --- 5. the comparison ---------------------------------------------------------------------------
step "compare ($mode)"
"$py" "$work/src/scripts/gpu/compare.py" "${args[@]}"
step_done
log "results: $out/results.json, $out/results.md"
