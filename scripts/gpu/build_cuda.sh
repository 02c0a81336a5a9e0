#!/usr/bin/env bash
# Build, HERE (a CPU machine with nvcc 13), the CUDA build of the vendored llama.cpp that the lent
# GPU machine would otherwise compile in its lease (275-357 s in the H100 runs described in
# moecli/planner/__init__.py), and pack it for the call's carry:
#
#   .carry/prebuilt.tar.xz   bin/llama-bench, bin/llama-fit-params, lib/ (libggml*, libllama,
#                            libcudart.so.13) and BUILDINFO (flags, commit, compiler, sha256s)
#
#   scripts/gpu/build_cuda.sh      (called by prepare.sh; needs build/gpu-prepare/lcp from it)
#
# What it is built for and with:
# - sm_90 only (`-DCMAKE_CUDA_ARCHITECTURES=90-real`): the H100/H200's compute capability 9.0;
#   no PTX is embedded, so the library is about half the size and no other card can run it.
# - ggml-cuda's defaults otherwise: FlashAttention kernels on, the vector kernels for the default
#   KV-type pairs only (GGML_CUDA_FA_QUANTS, ggml/CMakeLists.txt; GGML_CUDA_FA_ALL_QUANTS is
#   deprecated there and stays OFF); NCCL off (one GPU).
# - The CPU backend for x86-64-v3 (AVX2, FMA, F16C, BMI2), not for this machine's CPU: run.sh
#   rebuilds libggml-cpu.so natively on the GPU machine (GGML_NATIVE, as the H100 runs were built)
#   and keeps this one only if that fails.
# - cuBLAS 13.0 from NVIDIA's wheel on PyPI (nvidia-cublas 13.0.2.14, 421 MB, kept in the
#   git-ignored build/gpu-prepare/): headers and link-time libraries only; at run time the GPU
#   machine's own libcublas.so.13 is used (its image has CUDA 13 and the nvidia-cublas package).
# - libcuda.so: a stub with the driver's soname made here (no driver on this machine); the
#   executables link with --allow-shlib-undefined and find the real driver on the GPU machine.
#   Shared libraries link with --no-as-needed: this gcc passes --as-needed by default (its specs),
#   which would drop the symbol-less stub from libggml-cuda's NEEDED list, and ggml-cuda calls the
#   driver directly (its VMM pool: cuMemCreate, cuMemMap, ...): without libcuda.so.1 in NEEDED
#   those calls would not resolve on the GPU machine. Checked after the build.
#
# Environment: NVCC (default: nvcc on PATH), JOBS (default: all cores), CUBLAS_WHEEL (a
# downloaded nvidia_cublas-13.0.*.whl to skip the download), PYTHON (for pip, default python3).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=$root/build/gpu-prepare
src=$cache/lcp/vendor/llama.cpp
bld=$root/build/gpu-cuda
carry=$root/.carry
py=${PYTHON:-python3}
jobs=${JOBS:-$(nproc)}
nvcc=${NVCC:-$(command -v nvcc || true)}
[ -d "$src" ] || { echo "build_cuda: no $src: run scripts/gpu/prepare.sh first" >&2; exit 1; }
[ -n "$nvcc" ] || { echo "build_cuda: no nvcc (set NVCC=/path/to/cuda-13/bin/nvcc)" >&2; exit 1; }
# /usr/local/bin/nvcc may be a wrapper script: the toolkit is where the real one lives
real_nvcc=$(sed -n 's/^exec \([^ ]*nvcc\) .*/\1/p' "$nvcc" 2>/dev/null | head -1)
real_nvcc=$(readlink -f "${real_nvcc:-$nvcc}")
cuda_root=$(dirname "$(dirname "$real_nvcc")")
nvcc_version=$("$real_nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
case $nvcc_version in 13.*) ;; *) echo "build_cuda: nvcc $nvcc_version: the GPU machine has CUDA 13 (driver 580)" >&2; exit 1 ;; esac

# --- cuBLAS headers and link libraries (NVIDIA's wheel) --------------------------------------------
cublas=$cache/cublas13
if [ ! -f "$cublas/lib/libcublas.so" ]; then
  wheel=${CUBLAS_WHEEL:-}
  if [ -z "$wheel" ]; then
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 "nvidia-cublas==13.0.2.14" -d "$cache"
    wheel=$(ls "$cache"/nvidia_cublas-13.0.2.14-*.whl)
  fi
  rm -rf "$cublas" "$cache/cublas-unpack"
  "$py" -m zipfile -e "$wheel" "$cache/cublas-unpack"
  mkdir -p "$cublas"
  mv "$cache/cublas-unpack/nvidia/cu13/include" "$cache/cublas-unpack/nvidia/cu13/lib" "$cublas/"
  rm -rf "$cache/cublas-unpack"
  ln -sf libcublas.so.13 "$cublas/lib/libcublas.so"
  ln -sf libcublasLt.so.13 "$cublas/lib/libcublasLt.so"
fi

# --- a libcuda.so stub (the driver's soname, no symbols) --------------------------------------------
stub=$cache/cudastub
mkdir -p "$stub"
if [ ! -f "$stub/libcuda.so" ]; then
  echo '' > "$stub/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so.1" "$stub/stub.c"
  ln -sf libcuda.so.1 "$stub/libcuda.so"
fi

# --- configure and build ------------------------------------------------------------------------------
flags=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON
       -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF
       -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
       -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
       -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_CUDA_FA_ALL_QUANTS=OFF -DGGML_CUDA_NCCL=OFF
       "-DCMAKE_CUDA_COMPILER=$real_nvcc" "-DCUDAToolkit_ROOT=$cuda_root"
       "-DCUDA_cublas_LIBRARY=$cublas/lib/libcublas.so" "-DCUDA_cublasLt_LIBRARY=$cublas/lib/libcublasLt.so"
       "-DCUDA_cuda_driver_LIBRARY=$stub/libcuda.so" "-DCMAKE_CUDA_FLAGS=-I$cublas/include"
       "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined -Wl,-rpath-link,$cublas/lib:$stub"
       "-DCMAKE_SHARED_LINKER_FLAGS=-Wl,--no-as-needed")
mkdir -p "$bld"
log=$bld/build.log
began=$(date +%s)
cmake -S "$src" -B "$bld" "${flags[@]}" > "$bld/configure.log" 2>&1 || { tail -30 "$bld/configure.log" >&2; exit 1; }
configured=$(date +%s)
cmake --build "$bld" -j "$jobs" --target llama-bench llama-fit-params llama ggml > "$log" 2>&1 \
  || { tail -40 "$log" >&2; exit 1; }
built=$(date +%s)
echo "build_cuda: configure $(( configured - began )) s, build $(( built - configured )) s with -j $jobs" >&2

# --- what the GPU machine's loader will need --------------------------------------------------------
cudalib=$(ls "$bld"/bin/libggml-cuda.so.*.* | head -1)
needed=$(readelf -d "$cudalib" | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' | tr '\n' ' ')
for lib in libcuda.so.1 libcudart.so.13 libcublas.so.13; do
  case " $needed " in *" $lib "*) ;; *) echo "build_cuda: $cudalib does not need $lib ($needed)" >&2; exit 1 ;; esac
done
sections=$(readelf -S "$cudalib")  # captured first: `readelf | grep -q` fails under pipefail when grep quits early
case $sections in *.nv_fatbin*) ;; *) echo "build_cuda: no GPU code (.nv_fatbin) in $cudalib" >&2; exit 1 ;; esac

# --- pack -----------------------------------------------------------------------------------------------
stage=$cache/prebuilt
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib"
cp -a "$bld/bin/llama-bench" "$bld/bin/llama-fit-params" "$stage/bin/"
find "$bld/bin" -maxdepth 1 -name 'lib*.so*' -exec cp -a {} "$stage/lib/" \;
cp -a "$cuda_root"/lib64/libcudart.so.13* "$stage/lib/"
strip --strip-unneeded "$stage"/bin/* "$stage"/lib/lib*.so.*.* 2>/dev/null || true
{
  echo "vendored llama.cpp $(cat "$cache/lcp/VENDORED_LLAMA_CPP_COMMIT" 2>/dev/null || echo '?')"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m) with nvcc $nvcc_version, $(gcc --version | head -1)"
  echo "cmake ${flags[*]}"
  echo "configure $(( configured - began )) s, build $(( built - configured )) s with -j $jobs"
  (cd "$stage" && find bin lib -type f | sort | xargs sha256sum)
} > "$stage/BUILDINFO"
rm -f "$carry/prebuilt.tar.xz"
mkdir -p "$carry"
tar cf - -C "$cache" prebuilt | xz -T0 -6 > "$carry/prebuilt.tar.xz"
echo "build_cuda: $(du -h "$carry/prebuilt.tar.xz" | cut -f1) packed ($(du -sh "$stage" | cut -f1) unpacked)" >&2
