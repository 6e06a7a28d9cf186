"""Which Python packages a GPU machine with no package index needs, for benchmarks/gpu_check.sh.

    python benchmarks/gpu_packages.py wheels    # here: NAME==VERSION of every wheel to carry (fetch_wheels.sh)
    python benchmarks/gpu_packages.py missing   # there: the requirements of pyproject.toml not yet satisfied
    python benchmarks/gpu_packages.py slim WHEEL --keep cuda13   # here: drop other GPU builds from a wheel

`wheels` walks the requirements of pyproject.toml through the packages installed in this interpreter (the
project's `.venv`, so the wheels are the versions the test suite runs against) and names every distribution
of that closure except the large binary ones the GPU image already holds (torch, its CUDA libraries, numpy,
pandas, pyarrow, matplotlib...) and DeepSpeed, which publishes no wheel. Markers are evaluated for Linux
x86_64 and the target Python (`--python-version`, default 3.12, the GPU image's).

`missing` reads pyproject.toml with the interpreter that will run the check and prints each requirement it
does not satisfy, one a line; pip then installs those from the carried wheels and resolves their own needs
against what is installed and what was carried.

`slim` rewrites a wheel without the native libraries built for other GPU stacks: bitsandbytes ships one per
CUDA and ROCm version (41 MiB in all), the GPU image's torch loads only the CUDA 13 one, and the device tool
moves at most 64 MiB. The wheel's RECORD loses the dropped files' lines, so pip installs it as usual.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import shutil
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
ON_THE_IMAGE = {
    "torch",
    "triton",
    "numpy",
    "pandas",
    "pyarrow",
    "matplotlib",
    "pillow",
    "contourpy",
    "fonttools",
    "kiwisolver",
    "scipy",
    "setuptools",
}
"""Large binary distributions the GPU image ships (KINDS.md's package list): carrying them would blow the
64 MiB the device tool moves, and the image's builds match its CUDA."""
NO_WHEEL = {"deepspeed": "DeepSpeed publishes only a source archive; the ZeRO profiles are not part of the check"}
BUILD = ["hatchling", "editables", "packaging", "pathspec", "pluggy", "trove-classifiers"]
"""What `pip install -e .` needs to build alignkit offline (pyproject.toml's build backend)."""


def project_requirements() -> list[Requirement]:
    text = PYPROJECT.read_text(encoding="utf-8")
    # pyproject's dependency list is a flat array of quoted strings; tomllib is 3.11+ and this runs on 3.10 too.
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    if block is None:
        raise SystemExit(f"{PYPROJECT}: no dependencies array found")
    return [Requirement(item) for item in re.findall(r'"([^"]+)"', block.group(1))]


def _environment(python_version: str) -> dict[str, str]:
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


def _applies(requirement: Requirement, environment: dict[str, str]) -> bool:
    return requirement.marker is None or requirement.marker.evaluate(environment)


def wheel_pins(python_version: str) -> tuple[list[str], list[str]]:
    """NAME==VERSION for every distribution to carry, and a line for each one left out and why."""
    environment = _environment(python_version)
    pins: dict[str, str] = {}
    left_out: list[str] = []
    queue = [r for r in project_requirements() if _applies(r, environment)]
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        if name in pins or name in ON_THE_IMAGE or name.startswith(("nvidia-", "cuda-")):
            continue
        if name in NO_WHEEL:
            left_out.append(f"{name}: {NO_WHEEL[name]}")
            continue
        try:
            pins[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            left_out.append(f"{name}: not installed here, so no tested version to pin; install it here first")
            continue
        queue += [Requirement(r) for r in metadata.requires(name) or [] if _applies(Requirement(r), environment)]
    for name in BUILD:
        pins.setdefault(name, _installed_or_latest(name))
    return [f"{name}=={version}" if version else name for name, version in sorted(pins.items())], sorted(left_out)


def _installed_or_latest(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def missing() -> list[str]:
    """The project's requirements (for this interpreter) that its installed packages do not satisfy."""
    unmet = []
    for requirement in project_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            unmet.append(str(requirement))
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            unmet.append(str(requirement))
    return unmet


def slim(wheel: Path, keep: str) -> tuple[int, int]:
    """Drop every `lib*_{cuda,rocm,xpu}*.so` of `wheel` not matching `keep`; return its size before and after."""
    before = wheel.stat().st_size
    other_stack = re.compile(r"lib[^/]*_(cuda|rocm|xpu)[^/]*\.so$")

    def dropped(name: str) -> bool:
        return other_stack.search(name) is not None and keep not in Path(name).name

    slimmed = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slimmed, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if dropped(item.filename):
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode("utf-8").splitlines(keepends=True)
                data = "".join(line for line in lines if not dropped(line.split(",", 1)[0])).encode("utf-8")
            target.writestr(item, data)
    shutil.move(slimmed, wheel)
    return before, wheel.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["wheels", "missing", "slim"])
    parser.add_argument("wheel", nargs="?", type=Path, help="slim: the wheel to rewrite in place")
    parser.add_argument("--python-version", default="3.12", help="target Python of `wheels` (default 3.12)")
    parser.add_argument("--keep", default="cuda13", help="slim: the native libraries to keep (default cuda13)")
    args = parser.parse_args()
    if args.what == "slim":
        if args.wheel is None:
            parser.error("slim needs the wheel to rewrite")
        before, after = slim(args.wheel, args.keep)
        print(f"{args.wheel.name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB (kept {args.keep} libraries)")
    elif args.what == "wheels":
        pins, left_out = wheel_pins(args.python_version)
        print("\n".join(pins))
        for line in left_out:
            print(f"skipped: {line}", file=sys.stderr)
    else:
        print("\n".join(missing()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
