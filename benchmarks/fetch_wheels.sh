#!/usr/bin/env bash
# Download, on a machine with a package index, the wheels benchmarks/gpu_check.sh installs on a GPU machine
# that has none. The versions are the ones installed in the project's environment (the ones the tests run
# against), for Linux x86_64 and the GPU image's Python; benchmarks/gpu_packages.py says which and why.
#
# Usage, from the repository root: benchmarks/fetch_wheels.sh
#   PYTHON          the project's interpreter (default: .venv/bin/python, else python3)
#   PYTHON_VERSION  the GPU machine's Python (default: 3.12)
#   WHEELS          the folder to fill (default: benchmarks/wheels, git-ignored)
#   BNB_KEEP        the bitsandbytes native libraries kept (default: cuda13, for the image's torch cu130)
# DeepSpeed has no wheel and is left out (the check runs no ZeRO profile); torch and the other large
# binaries of the GPU image are never carried.
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
WHEELS="${WHEELS:-benchmarks/wheels}"

mapfile -t pins < <("$PYTHON" benchmarks/gpu_packages.py wheels --python-version "$PYTHON_VERSION")
mkdir -p "$WHEELS"
# pip matches each manylinux tag exactly, so every tag a wheel of this list is published under is named.
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
  --python-version "$PYTHON_VERSION" "${platforms[@]}" -d "$WHEELS" "${pins[@]}"
# Not a requirement of alignkit: the check's sft_liger section installs it to see the automatic Liger setting.
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS/optional" "liger-kernel==0.8.5"
# The device tool moves at most 64 MiB: bitsandbytes keeps only the libraries of the image's CUDA.
for wheel in "$WHEELS"/bitsandbytes-*.whl; do
  "$PYTHON" benchmarks/gpu_packages.py slim "$wheel" --keep "${BNB_KEEP:-cuda13}"
done
echo "$(ls "$WHEELS"/*.whl "$WHEELS"/optional/*.whl | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1) in $WHEELS"
size_kib=$(du -sk "$WHEELS" | cut -f1)
if ((size_kib > 56 * 1024)); then
  echo "warning: $WHEELS holds more than 56 MiB; with the repository it may exceed the 64 MiB a device call moves" >&2
fi
