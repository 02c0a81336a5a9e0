#!/usr/bin/env bash
# Prepare, HERE (where PyPI is reachable), what the lent GPU machine needs and cannot download:
#
#   .carry/lcp.tgz           llama-cpp-python's sdist at the version pyproject.toml pins, stripped to
#                            what one CMake build of llama.cpp + the Python binding needs (~5 MB)
#   .carry/wheels/           the Python 3.12 wheels listed in scripts/gpu/wheels.txt
#   .carry/prebuilt.tar.xz   llama.cpp built here with CUDA 13 for sm_90 (scripts/gpu/build_cuda.sh,
#                            checked by scripts/gpu/check_prebuilt.sh): saves the GPU machine its
#                            build (275-357 s in the H100 runs); PREBUILT=0 leaves it out
#   .carry/MANIFEST          versions, the vendored llama.cpp commit, sizes and sha256 of the above
#
#   scripts/gpu/prepare.sh                 (LCP_SDIST=/path/to/sdist.tar.gz to skip the download)
#
# The stripped tree in build/gpu-prepare/lcp is unpacked again only when the sdist or the strip
# list changes, so the CUDA build in build/gpu-cuda stays incremental (a no-op when nothing changed;
# the first build takes long on a small CPU machine: scripts/gpu/README.md has the figures).
# .carry/ is git-ignored; the device tool sends it when a call names it in `carry`. Everything that
# travels (the working tree + .carry) must stay under the tool's 64 MiB: checked at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
carry=$root/.carry
cache=$root/build/gpu-prepare   # git-ignored, never travels: the full sdist and the unpacked tree
limit_mib=${CARRY_LIMIT_MIB:-56} # the tool's limit is 64 MiB for the tree + carried paths: keep room
py=${PYTHON:-python3}

version=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$root/pyproject.toml")
[ -n "$version" ] || { echo "prepare: no llama-cpp-python==X pin in pyproject.toml" >&2; exit 1; }
mkdir -p "$cache" "$carry"

# --- the sdist ------------------------------------------------------------------------------------
sdist=${LCP_SDIST:-$cache/llama_cpp_python-$version.tar.gz}
if [ ! -f "$sdist" ]; then
  echo "prepare: downloading llama-cpp-python==$version (sdist, ~76 MB)" >&2
  "$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$cache"
fi
tree=$cache/lcp
vendored=$tree/vendor/llama.cpp
# what the unpacked tree depends on: the sdist and this script's strip list (the lines below)
tree_stamp="$(sha256sum "$sdist" | cut -c1-16) strip-$(sed -n '/^ *# Strip what/,/^ *echo "\$commit"/p' "$0" | sha256sum | cut -c1-16)"
if [ "$(cat "$tree/.stamp" 2>/dev/null)" != "$tree_stamp" ]; then
  rm -rf "$tree" "$cache/llama_cpp_python-$version"
  tar xzf "$sdist" -C "$cache"
  mv "$cache/llama_cpp_python-$version" "$tree"
  commit=$(git -C "$vendored" rev-parse HEAD 2>/dev/null || echo unknown)

  # Strip what the build does not read (the H100 runs (moecli/planner/__init__.py); configured with tests, examples, server
  # and app off, and only the CPU and CUDA backends): git history, docs, media, benchmarks, test
  # vocabularies, the server and its web UI, other ggml backends.
  rm -rf "$tree/.git" "$tree/docs" "$tree/examples" "$tree/tests" "$tree/docker"
  rm -rf "$vendored"/{.git,.github,.devops,docs,media,benches,tests,examples,gguf-py,conversion,requirements,skills,ci}
  rm -rf "$vendored"/models/ggml-vocab-* "$vendored/tools/ui" "$vendored/tools/server"
  for backend in sycl vulkan opencl hexagon metal cann openvino webgpu et virtgpu zdnn zendnn blas rpc; do
    rm -rf "$vendored/ggml/src/ggml-$backend"
  done
  echo "$commit" > "$tree/VENDORED_LLAMA_CPP_COMMIT"
  echo "$tree_stamp" > "$tree/.stamp"
fi
commit=$(cat "$tree/VENDORED_LLAMA_CPP_COMMIT")
rm -f "$carry/lcp.tgz"
tar czf "$carry/lcp.tgz" -C "$cache" --exclude lcp/.stamp lcp

# --- the wheels -----------------------------------------------------------------------------------
rm -rf "$carry/wheels"
mkdir -p "$carry/wheels"
# Pure-Python wheels match any platform; pydantic-core needs the cp312 manylinux one. The machine's
# glibc is recent (CUDA 13 image): manylinux 2.17 / 2.28 wheels run there.
grep -v '^\s*#' "$root/scripts/gpu/wheels.txt" | grep -v '^\s*$' > "$cache/wheels.txt"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$carry/wheels" -r "$cache/wheels.txt"
expected=$(wc -l < "$cache/wheels.txt")
got=$(find "$carry/wheels" -name '*.whl' | wc -l)
[ "$got" -eq "$expected" ] || { echo "prepare: $got wheels for $expected requirements" >&2; exit 1; }

# --- the CUDA build ----------------------------------------------------------------------------------
if [ "${PREBUILT:-1}" = 0 ]; then
  rm -f "$carry/prebuilt.tar.xz"
  echo "prepare: PREBUILT=0: no carried build; the GPU machine builds llama.cpp itself (275-357 s in the H100 runs)" >&2
elif [ -n "${NVCC:-}" ] || command -v nvcc > /dev/null; then
  PYTHON=$py bash "$root/scripts/gpu/build_cuda.sh"
  PYTHON=$py bash "$root/scripts/gpu/check_prebuilt.sh"  # what a CPU machine can check of it
else
  rm -f "$carry/prebuilt.tar.xz"
  echo "prepare: no nvcc here (NVCC=...): no carried build; the GPU machine builds llama.cpp itself" >&2
fi

# --- manifest and the size of what travels ---------------------------------------------------------
{
  echo "llama-cpp-python $version (vendored llama.cpp $commit)"
  echo "prepared $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
  (cd "$carry" && find lcp.tgz wheels $([ -f prebuilt.tar.xz ] && echo prebuilt.tar.xz) -type f | sort | xargs sha256sum)
} > "$carry/MANIFEST"

carry_bytes=$(du -sb "$carry" | cut -f1)
tree_bytes=$(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
total_mib=$(( (carry_bytes + tree_bytes + 1048575) / 1048576 ))
printf 'prepare: lcp.tgz %s, wheels %s (%s files), prebuilt %s, working tree %s MiB: %s MiB travels (limit %s)\n' \
  "$(du -h "$carry/lcp.tgz" | cut -f1)" "$(du -sh "$carry/wheels" | cut -f1)" "$got" \
  "$(du -h "$carry/prebuilt.tar.xz" 2>/dev/null | cut -f1 || echo none)" \
  "$(( (tree_bytes + 1048575) / 1048576 ))" "$total_mib" "$limit_mib"
if [ "$total_mib" -gt "$limit_mib" ]; then
  echo "prepare: too much would travel; strip more from the sdist or carry fewer wheels" >&2
  exit 1
fi
