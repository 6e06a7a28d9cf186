"""Methods as plug-ins: each method lives in its own module, and nothing outside `alignkit/methods/` names one."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import chat_file

from alignkit.methods import METHODS
from alignkit.methods.method import Method
from alignkit.recipe.automatic import Facts

PACKAGE = Path(__file__).resolve().parent.parent / "alignkit"
# The demo is a user of the CLI (it runs `alignkit sft` and `alignkit dpo` on its recipe), like configs/.
OWNERS = ("methods", "demo")
_NAMED = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, METHODS)) + r")(?!\w)")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (module, class, function and attribute docstrings)."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        for statement in body if isinstance(body, list) else []:
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                found.add(id(statement.value))
    return found


def _method_names_in_code(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            match = _NAMED.search(node.value)
            if match:
                hits.append(f"{path.name}:{node.lineno}: {match[0]!r} in {node.value[:60]!r}")
    return hits


def test_no_module_outside_methods_names_a_method():
    """Generic code asks the method object; a method name in a string literal is a branch or a list to update."""
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] not in OWNERS:
            hits += _method_names_in_code(path)
    assert hits == []


def test_the_scan_finds_a_method_name_and_a_branch(tmp_path):
    """The check above can fail: a comparison and a help string naming methods are both found."""
    module = tmp_path / "probe.py"
    module.write_text(
        'def pick(method):\n    """Docstrings may say sft."""\n    return method == "dpo" or f"{method} or orpo"\n'
    )
    found = _method_names_in_code(module)
    assert [hit.split(": ", 1)[1].split(" in ")[0] for hit in found] == ["'dpo'", "'orpo'"]


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_is_one_module_and_its_recipe_carries_it(name):
    method = METHODS[name]
    assert isinstance(method, Method)
    assert method.section.__module__ == f"alignkit.methods.{name}"
    assert (PACKAGE / "methods" / f"{name}.py").is_file()
    recipe = method.recipe.model_validate({"model": {"name_or_path": "m"}, "data": {"datasets": [{"path": "d"}]}})
    assert recipe.method is method
    assert recipe.section == method.section()  # the method's own section, defaulted
    assert set(method.data.row_fields) <= set(method.section.model_fields)
    assert method.defining_keys <= set(method.section.model_fields)


def test_every_method_maps_onto_its_trl_config_with_known_fields():
    facts = Facts(device="cpu", bf16=False, flash_attn=False, liger=False)
    for name, method in METHODS.items():
        section = method.section()
        # The automatic settings are decided before the TRL config is built (trl_config.build_trl_config).
        decided = {s.path.split(".", 1)[1]: s.value for s in method.automatic(section, facts) if s.automatic}
        settings = method.trl_settings(section.model_copy(update=decided))
        assert set(settings) <= method.trl_fields, name


def test_methods_table_lists_each_module_once():
    # Beside the methods: the Method record (method.py) and what the online methods share (online.py).
    modules = sorted(
        p.stem for p in (PACKAGE / "methods").glob("*.py") if p.stem not in ("__init__", "method", "online")
    )
    assert modules == sorted(METHODS)


PLUG_IN = """
import json, sys, types
from dataclasses import replace

from alignkit.methods import METHODS, Listing
from alignkit.methods import sft
from alignkit.recipe.sections import Section


class ToySection(Section):
    max_length: int = 64
    assistant_only_loss: bool = True


ToySection.__module__ = "alignkit.methods.toy"
module = types.ModuleType("alignkit.methods.toy")
module.ToySection = ToySection
module.METHOD = replace(sft.METHOD, name="toy", title="a toy method", section=ToySection)
sys.modules["alignkit.methods.toy"] = module
METHODS._listings["toy"] = Listing("toy", "A toy method added by a test.", "alignkit toy --recipe r.yaml")

from alignkit.cli import app

app(sys.argv[1:], standalone_mode=False)
"""


def test_a_method_is_one_module_and_one_listing(tmp_path):
    """A new module and its listing are all it takes: the command and the recipe model follow from them."""
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(
        f"model:\n  name_or_path: m\ndata:\n  datasets:\n    - path: {chat_file(tmp_path)}\ntoy:\n  max_length: 32\n"
        f"training:\n  output_dir: {tmp_path / 'out'}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", PLUG_IN, "toy", "--recipe", str(recipe), "--dry-run", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["method"] == "toy"
    assert document["recipe"]["toy"] == {"max_length": 32, "assistant_only_loss": True}
    assert document["recipe"]["training"]["learning_rate"] == METHODS["sft"].default_learning_rate
    assert not (tmp_path / "out").exists()
