"""FSDP's final save on one GPU for a 1B-shaped model: one full, unsharded state dict (issue #14).

    python benchmarks/gpu_fsdp.py [--shape 1b] [--steps 2] [--out FILE.json]

Runs `alignkit sft --launch fsdp --num-processes 1` on the Llama-3.2-1B-shaped model of
benchmarks/gpu_models.py for a few steps and checks what it saved: a finished run of the fsdp profile, the
weights as model.safetensors (or an index of safetensors shards) and no sharded FSDP checkpoint, holding
exactly the tensors of the model it started from, with the same shapes. The `gpu` tests do the same on the
tiny test model; this one shows the gather of a model whose full state dict is gigabytes. On a CPU
(`--shape tiny`) accelerate runs the fsdp profile as DDP, so only the save path is exercised.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_models import built_model

BATCH, MAX_LENGTH = 2, 512


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tensor_shapes(folder: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    shapes = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as weights:
            shapes.update({name: list(weights.get_slice(name).get_shape()) for name in weights.keys()})  # noqa: SIM118
    return shapes


def _recipe(built: dict, out: Path, steps: int) -> Path:
    import yaml

    recipe = {
        "model": {"name_or_path": built["model"]},
        "data": {"datasets": [{"path": built["data"]}]},
        "training": {
            "per_device_train_batch_size": BATCH,
            "max_steps": steps,
            "save_strategy": "no",
            "output_dir": str(out),
        },
        "sft": {"max_length": MAX_LENGTH},
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def check_save(shape: str, steps: int, root: Path, timeout: float | None) -> dict:
    built = built_model(root, shape, timeout)
    out = root / "fsdp"
    recipe = _recipe(built, out, steps)
    command = [sys.executable, "-m", "alignkit", "sft", "--recipe", str(recipe), "--overwrite"]
    command += ["--launch", "fsdp", "--num-processes", "1", "--main-process-port", str(_free_port())]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    report = {"section": "fsdp_save", "shape": shape, "parameters": built["parameters"], "steps": steps}
    report["seconds"] = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"alignkit sft --launch fsdp failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    run = json.loads((out / "alignkit_run.json").read_text(encoding="utf-8"))
    saved, source = _tensor_shapes(out), _tensor_shapes(Path(built["model"]))
    report["device"] = run["plan"]["device"]
    report["checks"] = {
        "run finished": run.get("finished") is True,
        "fsdp profile": run["plan"]["profile"] == "fsdp",
        "safetensors saved": (out / "model.safetensors").is_file() or (out / "model.safetensors.index.json").is_file(),
        "no sharded checkpoint": not list(out.glob("pytorch_model_fsdp*")),
        "same tensors and shapes as the model trained": saved == source,
    }
    report["extra_tensors"] = sorted(saved.keys() - source.keys())
    report["missing_tensors"] = sorted(source.keys() - saved.keys())
    report["other_shapes"] = sorted(name for name in saved.keys() & source.keys() if saved[name] != source[name])
    report["saved_bytes"] = sum(file.stat().st_size for file in out.glob("*.safetensors"))
    report["passed"] = all(report["checks"].values())
    return report


def print_report(report: dict) -> None:
    print(
        f"fsdp save, {report['shape']} shape ({report['parameters'] / 1e9:.3g}B parameters) on {report['device']}:"
        f" {report['seconds']:.0f} s, {report['saved_bytes'] / 2**30:.2f} GiB saved"
    )
    for check, passed in report["checks"].items():
        print(f"  {'ok    ' if passed else 'FAILED'} {check}")
    for kind in ("extra_tensors", "missing_tensors", "other_shapes"):
        if report.get(kind):
            print(f"  {kind.replace('_', ' ')}: {', '.join(report[kind][:8])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1b", choices=["tiny", "1b"])
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps before the save")
    parser.add_argument("--timeout", type=float, help="seconds each process may take")
    parser.add_argument("--workdir", type=Path, help="keep the model and run here (a model built there is reused)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        report = check_save(args.shape, args.steps, root, args.timeout)
    print_report(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
