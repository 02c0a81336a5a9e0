#!/usr/bin/env bash
# Check, HERE (no GPU, no driver), the carried CUDA build as far as a CPU machine can: that
# .carry/prebuilt.tar.xz unpacks, that every library and tool resolves its dependencies (with
# cuBLAS from build/gpu-prepare and the stub libcuda.so.1 standing in for the GPU machine's), that
# libggml-cuda holds sm_90 code and needs the driver, that llama.cpp registers its CUDA backend
# (with no device here), and that the tools and the Python binding run a model on the CPU with
# these very libraries. Called by prepare.sh after build_cuda.sh; exits non-zero on any failure.
#
#   scripts/gpu/check_prebuilt.sh          (PYTHON: a python with moecli's dependencies)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=$root/build/gpu-prepare
py=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "check_prebuilt: $*" >&2; exit 1; }

xz -dc "$root/.carry/prebuilt.tar.xz" | tar xf - -C "$tmp"
pre=$tmp/prebuilt
cudalib=$(ls "$pre"/lib/libggml-cuda.so.*.* | head -1)
# A stand-in for the driver: every cu* function libggml-cuda calls directly, each failing with
# CUDA_ERROR_UNKNOWN (999). Python loads libraries with RTLD_NOW, so they must exist to load at all;
# cudart finds none of its own entry points in it (cuGetProcAddress, ...) and reports no driver.
mkdir -p "$tmp/driver"
nm -D --undefined-only "$cudalib" | awk '$1 == "U" && $2 ~ /^cu[A-Z]/ {print "int " $2 "(void) { return 999; }"}' \
  > "$tmp/driver/stub.c"
[ -s "$tmp/driver/stub.c" ] || fail "libggml-cuda calls no driver function directly (expected its VMM pool's)"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$tmp/driver/libcuda.so.1" "$tmp/driver/stub.c"
export LD_LIBRARY_PATH=$pre/lib:$cache/cublas13/lib:$tmp/driver
for f in "$pre"/bin/* "$pre"/lib/lib*.so.*; do
  [ -L "$f" ] && continue
  missing=$(ldd "$f" 2>&1 | grep 'not found' || true)
  [ -z "$missing" ] || fail "$f: $missing"
done
echo "check_prebuilt: every library and tool resolves its dependencies"

# (outputs captured before grep: `cmd | grep -q` fails under pipefail when grep quits early)
dynamic=$(readelf -d "$cudalib")
grep -q 'NEEDED.*libcuda\.so\.1' <<< "$dynamic" || fail "libggml-cuda does not need libcuda.so.1"
# the GPU code: sm_90 machine code only (fatbin.py reads the fat binary's headers)
"$py" "$root/scripts/gpu/fatbin.py" "$cudalib" --only ELF:90 || fail "libggml-cuda's GPU code is not sm_90 machine code only"
exported=$(nm -D --defined-only "$cudalib")
for sym in ggml_backend_cuda_reg ggml_backend_cuda_init; do
  grep -qw "$sym" <<< "$exported" || fail "libggml-cuda exports no $sym"
done

# the CUDA backend registers (no device without a driver); the tools run on the CPU
devices=$("$pre/bin/llama-bench" --list-devices 2>&1) || fail "llama-bench --list-devices: $devices"
grep -qi cuda <<< "$devices" || fail "llama-bench does not load the CUDA backend: $devices"
echo "check_prebuilt: llama-bench --list-devices: $(echo "$devices" | tr '\n' ' ' | cut -c1-200)"
demo=$(PYTHONPATH=$root "$py" -c 'from moecli.synth import ensure_demo_model; print(ensure_demo_model())')
"$pre/bin/llama-bench" -m "$demo" -ngl 0 -p 32 -n 8 -r 1 -t 2 -o json > "$tmp/bench.json" 2> "$tmp/bench.err" \
  || fail "llama-bench on the demo model: $(tail -3 "$tmp/bench.err")"
"$py" - "$tmp/bench.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
print("check_prebuilt: llama-bench on the CPU with these libraries:", ", ".join(f"{r['avg_ts']:.0f} t/s" for r in rows))
EOF

# the Python binding loads these libraries from llama_cpp/lib (as run.sh sets it up)
tar xzf "$root/.carry/lcp.tgz" -C "$tmp"
mkdir -p "$tmp/lcp/llama_cpp/lib"
cp -a "$pre"/lib/lib*.so* "$tmp/lcp/llama_cpp/lib/"
PYTHONPATH=$tmp/lcp:$root "$py" - <<'EOF' || fail "the Python binding does not load or register CUDA"
import ctypes
import llama_cpp
from llama_cpp import _ggml
lib = _ggml.libggml
lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
reg = lib.ggml_backend_reg_by_name(b"CUDA")
print(f"check_prebuilt: llama_cpp {llama_cpp.__version__} loads; CUDA backend registered: {bool(reg)}; "
      f"GPU offload here: {llama_cpp.llama_supports_gpu_offload()} (no driver)")
raise SystemExit(0 if reg else 1)
EOF
echo "check_prebuilt: ok"
