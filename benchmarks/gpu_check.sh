#!/usr/bin/env bash
# GPU check: what the CPU test suite cannot show, in one run of under 8 minutes on one H100/H200 that reaches
# no model hub and no package index (issue #14).
#
# Sections, in order, each time-boxed; one that fails is reported and the next still runs:
#   machine         nvidia-smi, the GPU, torch/CUDA and the training stack's versions (no CUDA device: fails);
#   install         what pyproject.toml needs and the machine lacks, from the wheels in benchmarks/wheels
#                   (benchmarks/fetch_wheels.sh fills it on a machine with an index; carry that folder), then
#                   alignkit itself with `pip install --no-deps -e .`; DeepSpeed has no wheel and is skipped;
#   sft_throughput  Llama-3.2-1B shape, random weights: plain TRL SFTTrainer with SFTConfig defaults against
#                   `alignkit sft` with alignkit's defaults, real tokens/s, MFU, peak memory (gpu_throughput.py);
#   qlora_memory    Mistral-7B shape, `alignkit sft --qlora`: peak GPU memory against `alignkit plan --qlora`
#                   (gpu_qlora.py);
#   gpu_tests       every test marked `gpu` (`pytest -m gpu`): FSDP's full-state-dict save of the tiny model;
#   sample          `alignkit sample` on the 1B shape with the transformers backend and, when vLLM is installed,
#                   the vllm one: completions/s and tokens/s; and generation.py's batching ratio (gpu_sample.py);
#   sft_liger       sft_throughput again with liger-kernel installed (the wheel in benchmarks/wheels/optional),
#                   so alignkit's automatic settings turn Liger on, if time is left;
#   fsdp_save       the same save for the 1B shape (gpu_fsdp.py), if time is left;
#   grpo            `alignkit grpo` on the 1B shape generating with transformers and with vLLM colocated:
#                   seconds per step of each (gpu_grpo.py), if time is left.
# Every figure goes to $OUT/gpu_check.json when OUT is set (the device tool brings back what is under $OUT),
# else to benchmarks/gpu_check.json, with the whole log beside it; a summary table ends the output. Exit
# status: 0 when every section passed or was skipped, 1 otherwise.
#
# Usage, from the repository root: benchmarks/gpu_check.sh [extra pytest arguments for gpu_tests]
#   PYTHON                the interpreter holding torch (default: python3)
#   GPU_CHECK_SHAPES=tiny every model at the tiny shape with few steps: runs on a CPU, to check the script
#   GPU_CHECK_INSTALL=0   install nothing (use the environment as it is)
#   GPU_CHECK_WHEELS      the wheel folder (default: benchmarks/wheels)
#   GPU_CHECK_BUDGET      seconds for all sections together (default 450)
#   GPU_CHECK_ONLY        run only these sections (space-separated names; machine and install always run)
#   GPU_CHECK_WORK        scratch folder for models and runs (default: a new folder under /tmp, removed after)
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
PYTHON="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-450}"
DEST="${OUT:-$ROOT/benchmarks}"
SECTIONS="$(mktemp -d)"
WORK="${GPU_CHECK_WORK:-$(mktemp -d /tmp/alignkit-gpu-check.XXXXXX)}"
mkdir -p "$DEST" "$WORK"
START=$SECONDS
SKIP=
# The scripts and the training processes they start import this checkout, installed or not.
# $SITE stays empty unless pip cannot resolve the carried wheels against the image's packages; then install
# puts every carried wheel there, without resolving, ahead of the image's own.
SITE="$WORK/site"
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1
# transformers fetches Hub kernels at load on CUDA whenever `kernels` is installed, and fails offline: plain TRL
# needs this to load a model here. alignkit does not (it asks for them only with model.use_kernels).
export USE_HUB_KERNELS="${USE_HUB_KERNELS:-NO}"

if [[ "${GPU_CHECK_SHAPES:-}" == tiny ]]; then
  SFT_ARGS=(--shape tiny --steps 4 --warmup 1) QLORA_ARGS=(--shape tiny --steps 2) FSDP_ARGS=(--shape tiny)
  LIGER_ARGS=(--shape tiny --steps 4 --warmup 1) SAMPLE_ARGS=(--shape tiny --prompts 16 --max-new-tokens 8)
  GRPO_ARGS=(--shape tiny --steps 2 --generations 4 --prompts-per-step 2 --max-completion-length 8)
  ALLOW_CPU=--allow-cpu
else
  SFT_ARGS=(--shape 1b --steps 40 --warmup 5) QLORA_ARGS=(--shape 7b --steps 5) FSDP_ARGS=(--shape 1b --steps 2)
  LIGER_ARGS=(--shape 1b --steps 25 --warmup 5) SAMPLE_ARGS=(--shape 1b --prompts 256 --max-new-tokens 128)
  GRPO_ARGS=(--shape 1b --steps 6)
  ALLOW_CPU=
fi
export ROOT PYTHON SECTIONS ALLOW_CPU SITE WORK

# section NAME SECONDS COMMAND...: run COMMAND under `timeout`, at most SECONDS and at most what is left of
# the budget; record its status, exit code and time in status.tsv and its output in NAME.log.
section() {
  local name=$1 limit=$2 left=$((BUDGET - (SECONDS - START)))
  shift 2
  echo
  echo "== $name"
  local skip=$SKIP
  ((left < 20)) && skip="out of time (${left}s of the ${BUDGET}s budget left)"
  if [[ -n "${GPU_CHECK_ONLY:-}" && "$name" != machine && "$name" != install && " $GPU_CHECK_ONLY " != *" $name "* ]]; then
    skip="not in GPU_CHECK_ONLY"
  fi
  if [[ -n "$skip" ]]; then
    echo "skipped: $skip" | tee "$SECTIONS/$name.log"
    printf '%s\tskipped\t0\t0\n' "$name" >>"$SECTIONS/status.tsv"
    return
  fi
  ((limit > left)) && limit=$left
  local began=$SECONDS code
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$SECTIONS/$name.log"
  code=${PIPESTATUS[0]}
  local status=ok
  if ((code == 124 || code == 137)); then
    status=timeout
    echo "$name: stopped after ${limit}s" | tee -a "$SECTIONS/$name.log"
  elif ((code != 0)); then
    status=failed
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$code" "$((SECONDS - began))" >>"$SECTIONS/status.tsv"
}

machine() {
  nvidia-smi || echo "no nvidia-smi"
  "$PYTHON" benchmarks/gpu_report.py machine --out "$SECTIONS/machine.json" $ALLOW_CPU
}

install() {
  if [[ "${GPU_CHECK_INSTALL:-1}" == 0 ]]; then
    echo "skipped: GPU_CHECK_INSTALL=0"
    return 0
  fi
  local wheels="${GPU_CHECK_WHEELS:-$ROOT/benchmarks/wheels}" missing=() requirement
  while read -r requirement; do
    if [[ "$requirement" == deepspeed* ]] && ! ls "$wheels"/deepspeed-*.whl >/dev/null 2>&1; then
      echo "skipped: $requirement (no wheel; only the ZeRO profiles need it, and this check runs none)"
    elif [[ -n "$requirement" ]]; then
      missing+=("$requirement")
    fi
  done < <("$PYTHON" benchmarks/gpu_packages.py missing) || return 1
  if ((${#missing[@]})); then
    echo "missing: ${missing[*]}"
    [[ -d "$wheels" ]] || { echo "error: no $wheels: run benchmarks/fetch_wheels.sh and carry it"; return 1; }
    if ! "$PYTHON" -m pip install -q --no-index --find-links "$wheels" "${missing[@]}"; then
      echo "pip could not resolve the carried wheels against this image: installing all of them to $SITE unresolved"
      "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$wheels"/*.whl || return 1
    fi
  else
    echo "every requirement of pyproject.toml is installed"
  fi
  "$PYTHON" -m pip install -q --no-index --find-links "$wheels" --no-deps -e . ||
    echo "alignkit not installed: the check imports it from $ROOT through PYTHONPATH"
  "$PYTHON" -c "import alignkit, trl, datasets; print('alignkit', alignkit.__version__, 'from', alignkit.__file__)"
}
liger() {
  local wheel
  wheel=$(ls "${GPU_CHECK_WHEELS:-$ROOT/benchmarks/wheels}"/optional/liger_kernel-*.whl 2>/dev/null | head -1)
  [[ -n "$wheel" ]] || { echo "skipped: no liger_kernel wheel in benchmarks/wheels/optional"; return 0; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/liger-site" "$wheel" || return 1
  PYTHONPATH="$WORK/liger-site:$PYTHONPATH" "$PYTHON" benchmarks/gpu_throughput.py "$@"
}
# `timeout` runs programs, not functions: these run in a child bash that inherits them.
export -f machine install liger

section machine 45 bash -c machine
section install 120 bash -c install
# Without a GPU the 1B and 7B sections would only run into their time limits on the CPU.
grep -q $'^machine\tok' "$SECTIONS/status.tsv" || SKIP="no CUDA device (see machine)"
section sft_throughput 160 "$PYTHON" benchmarks/gpu_throughput.py "${SFT_ARGS[@]}" \
  --workdir "$WORK/sft-model" --out "$SECTIONS/sft_throughput.json"
section qlora_memory 180 "$PYTHON" benchmarks/gpu_qlora.py "${QLORA_ARGS[@]}" \
  --workdir "$WORK/qlora-model" --out "$SECTIONS/qlora_memory.json"
rm -rf "$WORK/qlora-model" # 14 GiB of 7B weights: the disk is small
section gpu_tests 120 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -s "$@"
section sample 100 "$PYTHON" benchmarks/gpu_sample.py "${SAMPLE_ARGS[@]}" \
  --workdir "$WORK/sft-model" --out "$SECTIONS/sample.json"
section sft_liger 110 bash -c 'liger "$@"' liger "${LIGER_ARGS[@]}" \
  --workdir "$WORK/sft-model" --out "$SECTIONS/sft_liger.json"
section fsdp_save 100 "$PYTHON" benchmarks/gpu_fsdp.py "${FSDP_ARGS[@]}" \
  --workdir "$WORK/sft-model" --out "$SECTIONS/fsdp_save.json"
section grpo 90 "$PYTHON" benchmarks/gpu_grpo.py "${GRPO_ARGS[@]}" \
  --workdir "$WORK/sft-model" --out "$SECTIONS/grpo.json"

[[ -z "${GPU_CHECK_WORK:-}" ]] && rm -rf "$WORK"
cut -f1 "$SECTIONS/status.tsv" | while read -r name; do
  echo "== $name"
  cat "$SECTIONS/$name.log"
done >"$DEST/gpu_check.log"
echo
echo "== summary ($((SECONDS - START))s in all)" | tee -a "$DEST/gpu_check.log"
"$PYTHON" benchmarks/gpu_report.py report "$SECTIONS" --out "$DEST/gpu_check.json" | tee -a "$DEST/gpu_check.log"
code=${PIPESTATUS[0]}
rm -rf "$SECTIONS"
exit "$code"
