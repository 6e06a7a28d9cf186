"""The CLI layer stays light: help, listing and dry runs never import the training stack."""

from __future__ import annotations

import subprocess
import sys

HEAVY = "{'torch', 'transformers', 'trl', 'datasets', 'accelerate', 'peft', 'deepspeed', 'bitsandbytes'}"


def _loaded_after(code: str) -> str:
    script = f"import sys\n{code}\nprint(sorted({HEAVY} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def test_importing_the_cli_loads_no_heavy_module():
    assert _loaded_after("import alignkit.cli") == "[]"


def test_help_list_and_dry_run_load_no_heavy_module():
    code = (
        "from alignkit.cli import app\n"
        "for args in (['--help'], ['sft', '--help'], ['recipes', 'list'],"
        " ['sft', '--recipe', 'zephyr-7b-gemma', '--qlora', '--dry-run'],"
        " ['dpo', '--recipe', 'zephyr-7b-gemma', '--dry-run', '--json'], ['sample', '--help'],"
        " ['sample', '--recipe', 'iterative-dpo', '--dry-run'], ['run', '--recipe', 'iterative-dpo', '--dry-run'],"
        " ['eval', '--help'], ['eval', '--model', 'org/model', '--tasks', 'arc_easy', '--dry-run']):\n"
        "    try:\n"
        "        app(args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
    )
    assert _loaded_after(code) == "[]"


def _modules_after(commands: list[list[str]]) -> list[str]:
    code = (
        "from alignkit.cli import app\n"
        f"for args in {commands!r}:\n"
        "    try:\n"
        "        app(args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "import sys\n"
        "print(sorted(m for m in sys.modules if m.startswith('alignkit.methods.')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return eval(result.stdout.strip().splitlines()[-1])  # a printed list of module names


def test_help_and_recipes_list_import_no_method_module():
    """Listing commands and recipes needs only the method listings, not the methods' recipe models."""
    commands = [["--help"], ["sft", "--help"], ["data", "--help"], ["recipes", "list"]]
    assert _modules_after(commands) == ["alignkit.methods.method"]
