#!/usr/bin/env bash
# Build one of llama.cpp's own tools (llama-bench, llama-server) from the SAME source that
# llama-cpp-python vendors, so that `moecli bench` / `moecli serve` and the tool are compared like
# for like (same commit, same CPU flags).
#
#   scripts/build_llama_tool.sh llama-bench|llama-server [BUILD_DIR]     (default: build/TOOL)
#
# The version is read from pyproject.toml's llama-cpp-python pin. Needs cmake and a C++ compiler;
# the sdist comes from PyPI (pip download), or from $LCP_SDIST if set (a .tar.gz).
# Extra CMake flags (e.g. -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90) go in $CMAKE_EXTRA.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tool=${1:?"which tool: llama-bench or llama-server"}
case $tool in llama-bench) server=OFF ;; llama-server) server=ON ;; *) echo "unknown tool: $tool" >&2; exit 2 ;; esac
out=${2:-$here/build/$tool}
version=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$here/pyproject.toml")
[ -n "$version" ] || { echo "no llama-cpp-python pin in pyproject.toml" >&2; exit 1; }
mkdir -p "$out"
src=$out/llama_cpp_python-$version
if [ ! -d "$src" ]; then
  sdist=${LCP_SDIST:-}
  if [ -z "$sdist" ]; then
    python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$out" >&2
    sdist=$out/llama_cpp_python-$version.tar.gz
  fi
  tar xzf "$sdist" -C "$out"
fi
jobs=$(nproc)
# The flags llama-cpp-python's own build uses on this machine (CMakeLists.txt of the sdist): a
# Release build of the vendored llama.cpp with native CPU flags, OpenMP, llamafile kernels.
cmake -S "$src/vendor/llama.cpp" -B "$out/cmake" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=$server -DLLAMA_BUILD_WEBUI=OFF -DBUILD_SHARED_LIBS=ON \
  ${CMAKE_EXTRA:-} >&2
cmake --build "$out/cmake" -j "$jobs" --target "$tool" >&2
echo "$out/cmake/bin/$tool"
