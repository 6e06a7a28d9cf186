"""A property-based fuzzer of what users give alignkit: recipe documents, `--set` values and data rows.

Shipped recipes (configs/) and Alignment Handbook configs (the shared corpus when it is beside the checkout,
and a few written here) are mutated: keys dropped, renamed or added, values replaced by random types, extreme
numbers, unicode, token-looking strings, and the YAML text itself cut, garbled or given anchors. Data files get
mutated rows of every layout alignkit reads. Every case must end in exit 0 or 2, in the dry run
(`alignkit METHOD --recipe F --dry-run`) and in the data preview (`alignkit data METHOD --recipe F`), never in a
traceback or any other exit code.

CI runs a few hundred cases in all (derandomised, so a failure reproduces); ALIGNKIT_FUZZ_EXAMPLES=N runs N
cases per property with a fresh random seed (the long run before a release). Cases that hit bugs being fixed
elsewhere are generated but set aside by the named exclusions below; delete an exclusion once its fix is in.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import traceback
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, shared_dir
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from alignkit.methods import METHODS

LONG_RUN = int(os.environ.get("ALIGNKIT_FUZZ_EXAMPLES") or 0)
_COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
}
settings.register_profile("alignkit-ci", derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("alignkit-long", max_examples=max(LONG_RUN, 1), print_blob=True, **_COMMON)
PROFILE = settings.get_profile("alignkit-long" if LONG_RUN else "alignkit-ci")


def examples(ci: int) -> settings:
    """The settings of one property: `ci` cases in CI, ALIGNKIT_FUZZ_EXAMPLES in a long run."""
    return settings(PROFILE, max_examples=LONG_RUN or ci)


# ---- exclusions: bugs owned by other work, generated but set aside until their fixes are merged ----


_ALIAS = re.compile(r"(^|[\s\[{,:=])[&*][^\s,\]}]")


def yaml_aliases(case: dict) -> bool:
    """Anchors and aliases, alias bombs included (being bounded by the YAML work)."""
    return any(_ALIAS.search(text) for text in (case.get("text", ""), *case.get("sets", ())))


# Each entry: a predicate over a case ({"document", "text", "sets", "rows"}) and the bug it sets aside.
EXCLUSIONS: list[typing.Callable[[dict], bool]] = [
    yaml_aliases,  # a 500-byte alias bomb makes the dry run hang and grow to gigabytes
]
if os.environ.get("ALIGNKIT_FUZZ_NO_EXCLUSIONS") == "1":  # to see whether the excluded bugs are fixed
    EXCLUSIONS = []


def set_aside_excluded(case: dict) -> None:
    for excluded in EXCLUSIONS:
        assume(not excluded(case))


# ---- seeds ----


def _shipped() -> list[tuple[str, dict]]:
    seeds = []
    for path in sorted((REPO / "configs" / "recipes").glob("*/*.yaml")):
        method = path.stem.partition(".")[0]
        if method in METHODS:
            seeds.append((method, yaml.safe_load(path.read_text(encoding="utf-8"))))
    return seeds


def _handbook() -> list[tuple[str, dict]]:
    shared = shared_dir()
    corpus = (
        sorted(
            p
            for p in (shared / "reference" / "handbook-recipes").rglob("*.yaml")
            if "accelerate_configs" not in p.parts and p.parent.name in METHODS
        )
        if shared
        else []
    )
    seeds = [(p.parent.name, yaml.safe_load(p.read_text(encoding="utf-8"))) for p in corpus]
    # Flat configs in the handbook's two dataset layouts, so the fuzzer mutates some without ../shared too.
    flat = [
        {
            "model_name_or_path": "org/base",
            "torch_dtype": "bfloat16",
            "dataset_mixer": {"org/chat": 0.5, "org/more": 1.0},
            "dataset_splits": ["train_sft", "test_sft"],
            "preprocessing_num_workers": 4,
            "learning_rate": 2.0e-5,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 2,
            "max_seq_length": 2048,
            "output_dir": "data/base-run",
            "bf16": True,
            "beta": 0.05,
        },
        {
            "model_name_or_path": "org/base",
            "dataset_mixture": {
                "datasets": [
                    {"id": "org/prefs", "config": "default", "split": "train", "columns": ["chosen", "rejected"]}
                ],
                "seed": 42,
                "test_split_size": 100,
            },
            "learning_rate": 5.0e-7,
            "lr_scheduler_type": "cosine",
            "warmup_ratio": 0.1,
            "max_length": 1024,
            "max_prompt_length": 512,
        },
    ]
    return seeds + [(method, doc) for doc in flat for method in METHODS]


SEEDS = _shipped() + _handbook()


# ---- random values ----

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
_SPECIAL_TEXT = st.sampled_from(
    [
        "",
        " ",
        "null",
        "~",
        "yes",
        "1e-8",
        "0x10",
        "1_000",
        "../../etc/passwd",
        "/proc/self/mem",
        "{{ raise('x') }}",
        "{% for %}",
        "!!python/object/apply:os.system ['true']",
        "hf_" + "a" * 13,
        "hf_" + "Ab1" * 12,
        "\x00",
        "\u202e\u200b",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "a" * 300,
    ]
)
_EXTREME_INTS = st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**63, -(2**63), 10**30])
_EXTREME_FLOATS = st.sampled_from([0.0, -0.0, 1e-320, 5e-324, 1e308, -1e308, 1e20, math.inf, -math.inf, math.nan])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    _EXTREME_INTS,
    st.floats(),
    _EXTREME_FLOATS,
    _TEXT,
    _SPECIAL_TEXT,
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=6
)


def _nodes(value: Any, path: tuple = ()) -> list[tuple]:
    """Every path into a document (keys and list indices)."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _nodes(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _nodes(item, (*path, index))
    return found


def _parent(document: Any, path: tuple) -> Any:
    for step in path[:-1]:
        document = document[step]
    return document


@st.composite
def mutated_document(draw) -> tuple[str, Any]:
    """A seed recipe with one to four mutations (or, rarely, any YAML value at all)."""
    method, seed = draw(st.sampled_from(SEEDS))
    if draw(st.integers(0, 19)) == 0:
        return method, draw(VALUES)
    document = copy.deepcopy(seed)
    for _ in range(draw(st.integers(1, 4))):
        nodes = [p for p in _nodes(document) if p]
        if not nodes:
            break
        path = draw(st.sampled_from(nodes))
        parent, key = _parent(document, path), path[-1]
        action = draw(st.sampled_from(["replace", "replace", "drop", "add", "rename", "wrap"]))
        if action == "replace":
            parent[key] = draw(VALUES)
        elif action == "drop":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(_TEXT)] = draw(VALUES)
        elif action == "rename" and isinstance(parent, dict):
            parent[f"{key}{draw(st.sampled_from(['_', 's', 'x', '']))}".upper()] = parent.pop(key)
        elif action == "wrap":
            parent[key] = [parent[key]] if draw(st.booleans()) else {"value": parent[key]}
    return method, document


def _dump(document: Any) -> str:
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)


@st.composite
def recipe_text(draw, document: Any) -> str:
    """The YAML text of a document, sometimes cut short, garbled, or given anchors and aliases."""
    text = _dump(document)
    action = draw(st.sampled_from(["none", "none", "none", "cut", "insert", "alias", "bomb", "tab"]))
    if action == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif action == "insert":
        at = draw(st.integers(0, len(text)))
        text = (
            text[:at]
            + draw(st.sampled_from([":", "- ", "{", "]", "'", '"', "\t", "\n  ", "&a ", "*a", "!!str "]))
            + text[at:]
        )
    elif action == "alias":
        text = "base: &base {name_or_path: org/m}\n" + text.replace("model:\n", "model: *base\nx_model:\n", 1)
    elif action == "bomb":
        levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
        levels += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 9)]
        text = "\n".join(levels) + "\n" + text
    elif action == "tab":
        text = text.replace("  ", "\t", 1)
    return text


_TEXT_ALPHABET = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def _field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        paths.append(prefix + name)
        for inner in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                paths += _field_paths(inner, f"{prefix}{name}.")
    return paths


FIELD_PATHS = [
    *sorted({p for method in METHODS.values() for p in _field_paths(method.recipe)}),
    "data.datasets.0.path",
    "data.datasets.0.weight",
    "data.datasets.7.split",
    "training.extra.adam_epsilon",
]
SET_VALUES = st.one_of(
    _TEXT,
    _SPECIAL_TEXT,
    st.integers().map(str),
    _EXTREME_INTS.map(str),
    st.floats().map(repr),
    st.sampled_from(["[a, b]", "{x: 1}", "[1, [2]]", "'quoted'", '"dq', "- item", "a: b: c", "!!binary AAAA"]),
)
OVERRIDES = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(FIELD_PATHS), SET_VALUES).map(lambda pv: f"{pv[0]}={pv[1]}"),
        st.text(_TEXT_ALPHABET, max_size=30),
    ),
    max_size=3,
)


def _check_exit(result) -> None:
    """Exit 0 or 2, no traceback: anything else is a crash the user would see."""
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    where = "".join(traceback.format_exception(*result.exc_info)[-4:]) if crashed else ""
    assert not crashed and result.exit_code in (0, 2), (result.exit_code, result.output, where)
    assert "Traceback" not in result.output


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- recipes and --set in the dry run ----


@examples(ci=200)
@given(data=st.data(), as_json=st.booleans())
def test_any_recipe_and_set_values_dry_run_to_exit_0_or_2(cli, in_tmp, data, as_json):
    method, document = data.draw(mutated_document(), label="document")
    text = data.draw(recipe_text(document), label="text")
    sets = data.draw(OVERRIDES, label="sets")
    set_aside_excluded({"document": document, "text": text, "sets": sets})
    recipe = in_tmp / "recipe.yaml"
    recipe.write_text(text, encoding="utf-8")
    args = [method, "--recipe", recipe, "--dry-run", *(["--json"] if as_json else [])]
    _check_exit(cli(*args, *[a for s in sets for a in ("--set", s)]))


# ---- data rows in the data preview ----

_CHAT = [{"role": "user", "content": "what is 2 plus 3"}, {"role": "assistant", "content": "5"}]
_ROW_SEEDS = [
    {"messages": _CHAT},
    {"messages": [{"role": "system", "content": "you are a tiny model"}, *_CHAT]},
    {"prompt": _CHAT[:1], "completion": _CHAT[1:]},
    {"prompt": _CHAT[:1], "chosen": _CHAT[1:], "rejected": [{"role": "assistant", "content": "7"}]},
    {"chosen": _CHAT, "rejected": [_CHAT[0], {"role": "assistant", "content": "7"}]},
    {"prompt": "what is 2 plus 3", "chosen": "5", "rejected": "7"},
    {"prompt": _CHAT[:1], "completion": _CHAT[1:], "label": True},
    {"prompt": "what is 2 plus 3", "completion": "7", "label": False},
    {"text": "hello world"},
]


@st.composite
def mutated_rows(draw) -> list[Any]:
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        row = copy.deepcopy(draw(st.sampled_from(_ROW_SEEDS)))
        for _ in range(draw(st.integers(0, 2))):
            nodes = [p for p in _nodes(row) if p]
            if not nodes:
                break
            path = draw(st.sampled_from(nodes))
            parent, key = _parent(row, path), path[-1]
            action = draw(st.sampled_from(["replace", "drop", "add"]))
            if action == "replace":
                parent[key] = draw(VALUES)
            elif action == "drop":
                del parent[key]
            elif isinstance(parent, dict):
                parent[draw(_TEXT)] = draw(VALUES)
        rows.append(row if draw(st.integers(0, 9)) else draw(VALUES))
    return rows


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A folder with only a tokenizer: the data preview needs no weights."""
    from alignkit.demo.tiny import build_tokenizer

    folder = tmp_path_factory.mktemp("fuzz-tokenizer")
    build_tokenizer().save_pretrained(folder)
    return folder


@examples(ci=40)
@given(
    method=st.sampled_from(list(METHODS)),
    rows=mutated_rows(),
    garbage=st.one_of(st.none(), st.text(_TEXT_ALPHABET, max_size=20)),
    sets=st.lists(
        st.sampled_from(["data.test_split_size=1", "data.seed=3", "data.system_prompt=be brief"]), max_size=1
    ),
)
def test_any_data_rows_preview_to_exit_0_or_2(cli, in_tmp, tokenizer_dir, method, rows, garbage, sets):
    set_aside_excluded({"rows": rows, "sets": sets})
    lines = [json.dumps(row, ensure_ascii=False) for row in rows] + ([garbage] if garbage is not None else [])
    (in_tmp / "rows.jsonl").write_text("\n".join(lines), encoding="utf-8")
    recipe = in_tmp / "recipe.yaml"
    recipe.write_text(
        f"model: {{name_or_path: {json.dumps(str(tokenizer_dir))}}}\n"
        "data: {datasets: [{path: rows.jsonl}]}\n"
        f"training: {{output_dir: {json.dumps(str(in_tmp / 'out'))}}}\n",
        encoding="utf-8",
    )
    _check_exit(
        cli("data", method, "--recipe", recipe, "--show", "1", "--json", *[a for s in sets for a in ("--set", s)])
    )
