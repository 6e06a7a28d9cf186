#!/usr/bin/env bash
# GPU check: what the CPU test suite cannot show, run on a machine with at least one CUDA device.
#
# Checks, in order:
#   1. the machine: nvidia-smi, and the torch / CUDA versions torch was built with and sees;
#   2. that torch sees a CUDA device (it fails here otherwise, rather than skipping every test);
#   3. every test marked `gpu` (`pytest -m gpu`), e.g. `--launch fsdp` on the tiny model saving one full,
#      unsharded state dict that from_pretrained loads.
# It must finish in under 8 minutes in all (the tests take a few minutes on one GPU); later throughput checks
# added here must keep within that.
#
# Usage, from the repository root: benchmarks/gpu_check.sh [extra pytest arguments]
# PYTHON picks the interpreter (default: python).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

echo "== nvidia-smi"
nvidia-smi

echo "== torch and CUDA"
"$PYTHON" - <<'PY'
import sys

import torch

print(f"python {sys.version.split()[0]}, torch {torch.__version__}, built for CUDA {torch.version.cuda}")
if not torch.cuda.is_available():
    sys.exit("error: torch sees no CUDA device; the gpu tests would all be skipped")
for index in range(torch.cuda.device_count()):
    print(f"cuda:{index} {torch.cuda.get_device_name(index)}, capability {torch.cuda.get_device_capability(index)}")
print(f"cuDNN {torch.backends.cudnn.version()}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
PY

echo "== pytest -m gpu"
"$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -s "$@"
