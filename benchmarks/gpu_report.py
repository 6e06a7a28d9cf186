"""The GPU check's machine facts and its final report (benchmarks/gpu_check.sh).

    python benchmarks/gpu_report.py machine --out FILE.json [--allow-cpu]
    python benchmarks/gpu_report.py report SECTIONS_DIR --out FILE.json

`machine` records the GPU, the driver and the versions of the training stack, and fails where torch sees no
CUDA device (the gpu tests would all be skipped) unless --allow-cpu. `report` gathers what every section
left in SECTIONS_DIR (`status.tsv`: name, status, exit code, seconds; `NAME.json`: its figures; `NAME.log`:
its output) into one JSON file and prints a summary table.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import platform
import subprocess
import sys
from pathlib import Path

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed", "alignkit")


def machine(allow_cpu: bool) -> dict:
    import torch

    facts = {"python": platform.python_version(), "torch_cuda": torch.version.cuda}
    for name in PACKAGES:
        try:
            facts[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            facts[name] = None
    if torch.cuda.is_available():
        facts["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        facts["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        facts["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, check=False)
        facts["driver"] = done.stdout.strip() or None
    elif not allow_cpu:
        raise SystemExit("error: torch sees no CUDA device; the gpu tests would all be skipped")
    else:
        facts["gpus"] = []
    return facts


def _read_status(folder: Path) -> list[dict]:
    rows = []
    for line in (folder / "status.tsv").read_text(encoding="utf-8").splitlines():
        name, status, code, seconds = line.split("\t")
        rows.append({"name": name, "status": status, "exit_code": int(code), "seconds": float(seconds)})
    return rows


def _last_line(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines() if log.is_file() else []
    return lines[-1][:300] if lines else ""


def gather(folder: Path) -> dict:
    sections = {}
    for row in _read_status(folder):
        figures = folder / f"{row['name']}.json"
        row["figures"] = json.loads(figures.read_text(encoding="utf-8")) if figures.is_file() else None
        row["last_line"] = _last_line(folder / f"{row['name']}.log")
        sections[row.pop("name")] = row
    failed = [name for name, row in sections.items() if row["status"] not in ("ok", "skipped")]
    return {"sections": sections, "failed": failed}


def _headline(name: str, figures: dict | None, last_line: str) -> str:
    """The one figure a reader looks for first in each section."""
    if not figures:
        return last_line
    if name == "machine":
        gpus = ", ".join(figures["gpus"]) or "no GPU"
        return f"{gpus}; torch {figures['torch']}, transformers {figures['transformers']}, trl {figures['trl']}"
    if name in ("sft_throughput", "sft_liger"):
        trl, ours = figures["trl"], figures["alignkit"]
        speedup = figures.get("speedup")
        mfu = "/".join(f"{100 * side['mfu']:.1f}%" if side["mfu"] else "-" for side in (trl, ours))
        line = f"tokens/s TRL {trl['tokens_per_s'] or 0:.0f}, alignkit {ours['tokens_per_s'] or 0:.0f}"
        if speedup:
            line += f" ({speedup:.2f}x)"
        return f"{line}; MFU {mfu}; memory {figures['memory_ratio']:.2f}x"
    if name == "qlora_memory":
        measured = f"peak {figures['peak_memory_bytes'] / 2**30:.1f} GiB"
        if "skipped" in figures["plan"]:
            return f"{measured}; plan skipped: {figures['plan']['skipped']}"
        ratio = figures.get("plan_over_device_peak", figures["plan_over_peak"])
        return f"{measured}; plan {figures['plan']['planned_total'] / 2**30:.1f} GiB, plan/measured {ratio:.2f}"
    if name == "sample":
        parts = []
        for backend in ("transformers", "vllm"):
            side = figures.get(backend, {})
            if "completions_per_second" in side:
                parts.append(f"{backend} {side['completions_per_second']:.0f} completions/s")
            else:
                parts.append(f"{backend} {side.get('skipped') or side.get('error')}")
        batching = figures.get("batching", {})
        if "ratio" in batching:
            parts.append(f"batching {1 / batching['ratio']:.1f}x")
        return "; ".join(parts)
    if name == "grpo":
        parts = []
        for arm in ("transformers", "vllm"):
            side = figures.get(arm, {})
            if side.get("seconds_per_step"):
                parts.append(f"{arm} {side['seconds_per_step']:.2f} s/step ({side['generation']})")
            else:
                parts.append(f"{arm} {side.get('skipped') or side.get('error')}")
        if figures.get("vllm_speedup"):
            parts.append(f"vLLM {figures['vllm_speedup']:.2f}x")
        return "; ".join(parts)
    if name == "fsdp_save":
        passed = sum(figures["checks"].values())
        return f"{passed}/{len(figures['checks'])} checks, {figures['saved_bytes'] / 2**30:.2f} GiB saved"
    return last_line


def print_summary(report: dict) -> None:
    print(f"\n{'section':<16} {'status':<8} {'time':>6}  figures")
    for name, row in report["sections"].items():
        headline = _headline(name, row["figures"], row["last_line"])
        print(f"{name:<16} {row['status']:<8} {row['seconds']:>5.0f}s  {headline}")
    print("failed: " + (", ".join(report["failed"]) or "none"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["machine", "report"])
    parser.add_argument("sections", nargs="?", type=Path, help="report: the folder the sections wrote")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--allow-cpu", action="store_true", help="machine: no CUDA device is not an error")
    args = parser.parse_args()
    if args.what == "machine":
        facts = machine(args.allow_cpu)
        print(json.dumps(facts, indent=2))
        args.out.write_text(json.dumps(facts, indent=2), encoding="utf-8")
        return 0
    if args.sections is None:
        parser.error("report needs the sections folder")
    report = gather(args.sections)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print_summary(report)
    print(f"figures: {args.out}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
