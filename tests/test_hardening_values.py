"""No silent wrong result from a value: infinite and absurd numbers refused at validation, a run that diverges
stopped unfinished, `1e-8` read as a number, two handbook keys for one fact refused, a changed finished
pipeline stage refused rather than skipped, and data rows with unknown roles or no content refused by row.
"""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import MINIMAL_SFT, chat_file
from pydantic import BaseModel

from alignkit.errors import RunError, UserError
from alignkit.methods import METHODS
from alignkit.recipe.resolve import resolve_recipe
from alignkit.run_record import RECIPE_FILE, RUN_FILE

# The chat fine-tuning method: the one that reads token rows (conversations).
METHOD = next(name for name, method in METHODS.items() if method.data.rows == "tokens")


@pytest.fixture
def recipe(write_recipe, tmp_path) -> Path:
    return write_recipe(MINIMAL_SFT.format(output_dir=tmp_path / "run", data=chat_file(tmp_path)))


def _refused(cli, recipe: Path, *sets: str):
    args = [part for text in sets for part in ("--set", text)]
    result = cli(METHOD, "--recipe", recipe, *args, "--dry-run")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.stderr.strip().splitlines()


# ---- infinite values are refused where NaN is ----


@pytest.mark.parametrize("value", [".inf", "inf", "-inf", "-.inf", ".nan", "1e999"])
def test_an_infinite_learning_rate_is_refused_naming_the_override(cli, recipe, value):
    given = {".inf": "inf", "-.inf": "-inf", ".nan": "nan", "1e999": "inf"}.get(value, repr(value))
    assert _refused(cli, recipe, f"training.learning_rate={value}") == [
        f"error: --set training.learning_rate={value}: training.learning_rate: must be a finite number (given: {given})"
    ]


def test_an_infinite_value_in_the_file_names_the_file_and_field(cli, write_recipe, tmp_path):
    text = (
        MINIMAL_SFT.format(output_dir=tmp_path / "run", data=chat_file(tmp_path))
        + "  learning_rate: .inf\n  max_grad_norm: -.inf\n"
    )
    path = write_recipe(text)
    assert _refused(cli, path) == [
        f"error: {path}: training.learning_rate: must be a finite number (given: inf)",
        f"error: {path}: training.max_grad_norm: must be a finite number (given: -inf)",
    ]


@pytest.mark.parametrize(
    ("text", "field", "given"),
    [
        ("training.extra.adam_epsilon=.inf", "training.extra.adam_epsilon", "inf"),
        ("training.extra.adam_beta1=inf", "training.extra.adam_beta1", "'inf'"),
        ("training.lr_scheduler_kwargs.min_lr=-.inf", "training.lr_scheduler_kwargs.min_lr", "-inf"),
        ("training.extra.fsdp_config={a: [1, .nan]}", "training.extra.fsdp_config.a.1", "nan"),
    ],
)
def test_infinite_values_inside_free_form_mappings_are_refused_by_key(cli, recipe, text, field, given):
    assert _refused(cli, recipe, text) == [f"error: --set {text}: {field}: must be a finite number (given: {given})"]


def _float_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, bool]]:
    """(dotted path, whether it is a list) of every field that takes a float, nested sections included."""
    found = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        args = _flatten(info.annotation)
        sections = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(sections) > 1:
            continue  # a list of scorers, one kind per item: tests/test_scoring.py refuses inf weights in each
        if sections:
            index = ".0" if typing.get_origin(info.annotation) is list else ""
            found += _float_fields(sections[0], f"{path}{index}.")
        elif float in args:
            found.append((path, any(typing.get_origin(a) is list for a in _members(info.annotation))))
    return found


def _members(annotation) -> list:
    return [annotation, *typing.get_args(annotation)]


def _flatten(annotation) -> set:
    out = {annotation}
    for arg in typing.get_args(annotation):
        out |= _flatten(arg)
    return out


@pytest.mark.parametrize("name", list(METHODS))
def test_every_float_field_of_every_method_refuses_infinity(write_recipe, tmp_path, name):
    """Every number field, the shared sections' and the method's own, refuses inf exactly as NaN."""
    path = write_recipe(MINIMAL_SFT.format(output_dir=tmp_path / "run", data=chat_file(tmp_path)))
    fields = _float_fields(METHODS[name].recipe)
    assert {"training.learning_rate", "data.datasets.0.weight", "training.num_train_epochs"} <= {f for f, _ in fields}
    for field, is_list in fields:
        value = "[.inf]" if is_list else ".inf"
        with pytest.raises(UserError) as err:
            resolve_recipe(name, str(path), overrides=[f"{field}={value}"], mirrors={})
        assert [p.path for p in err.value.problems] == [field + (".0" if is_list else "")], field
        assert err.value.problems[0].message.startswith("must be a finite number"), err.value


# ---- numbers bounded to what the machinery takes ----


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("training.num_train_epochs=1e308", "must be above 0 and at most 10,000 (given: 1e+308)"),
        ("training.per_device_train_batch_size=1e20", "must be a whole number from 1 to 100,000 (given: 1e+20)"),
        ("training.per_device_eval_batch_size=100001", "must be a whole number from 1 to 100,000 (given: 100001)"),
        ("training.gradient_accumulation_steps=1e9", "must be a whole number from 1 to 100,000 (given: 1000000000.0)"),
        ("training.max_steps=1e19", "must be a whole number from -1 to 1,000,000,000 (given: 1e+19)"),
        ("training.save_steps=1e300", "must be above 0 and at most 1,000,000,000 (given: 1e+300)"),
        ("training.eval_steps=0", "must be above 0 and at most 1,000,000,000 (given: 0)"),
        ("logging.logging_steps=99999999999", "must be above 0 and at most 1,000,000,000 (given: 99999999999)"),
        ("training.seed=4294967296", "must be a whole number from 0 to 4,294,967,295 (given: 4294967296)"),
        ("data.seed=-1", "must be a whole number from 0 to 4,294,967,295 (given: -1)"),
        ("training.ddp_timeout=1e308", "must be a whole number from 1 to 31,536,000 (given: 1e+308)"),
        ("data.datasets.0.weight=1e20", "must be from 0 to 1,000 (given: 1e+20)"),
        (f"{METHOD}.max_length=1e12", "must be a whole number from 1 to 16,777,216 (given: 1000000000000.0)"),
    ],
)
def test_absurd_numbers_are_refused_with_the_allowed_range(cli, recipe, text, message):
    field = text.split("=")[0]
    assert _refused(cli, recipe, text) == [f"error: --set {text}: {field}: {message}"]


def test_the_bounds_keep_every_sane_value(recipe):
    sets = [
        "training.num_train_epochs=0.5",
        "training.seed=4294967295",
        "data.seed=0",
        "training.max_steps=-1",
        "training.save_steps=0.05",
        "training.per_device_train_batch_size=100000",
        f"{METHOD}.max_length=131072",
        "data.datasets.0.weight=0",
    ]
    training = resolve_recipe(METHOD, str(recipe), overrides=sets, mirrors={}).recipe.training
    assert (training.num_train_epochs, training.seed, training.save_steps) == (0.5, 4294967295, 0.05)


# ---- numbers in exponent notation are numbers ----


def test_set_reads_exponent_notation_as_a_float_everywhere(cli, recipe):
    result = cli(
        METHOD,
        "--recipe",
        recipe,
        "--set",
        "training.extra.adam_epsilon=1e-8",
        "--set",
        "training.lr_scheduler_kwargs.min_lr=5e-7",
        "--set",
        "training.learning_rate=1E+3",
        "--dry-run",
        "--json",
    )
    assert result.exit_code == 0, result.output
    training = json.loads(result.stdout)["recipe"]["training"]
    assert training["extra"] == {"adam_epsilon": 1e-8}
    assert training["lr_scheduler_kwargs"] == {"min_lr": 5e-7}
    assert training["learning_rate"] == 1000.0


def test_recipe_files_read_exponent_notation_as_a_float(write_recipe, tmp_path):
    text = (
        MINIMAL_SFT.format(output_dir=tmp_path / "run", data=chat_file(tmp_path))
        + "  extra:\n    adam_epsilon: 1e-8\n    adam_beta2: 9.99E-1\n"
    )
    training = resolve_recipe(METHOD, str(write_recipe(text)), mirrors={}).recipe.training
    assert training.extra == {"adam_epsilon": 1e-8, "adam_beta2": 0.999}
    assert all(isinstance(v, float) for v in training.extra.values())


def test_the_reading_stays_safe_and_leaves_pyyaml_alone(write_recipe, tmp_path):
    from alignkit.recipe.yamlio import parse_yaml

    assert parse_yaml("[1e-8, 1e, e5, 0x1f, 12]", "x") == [1e-8, "1e", "e5", 31, 12]
    assert yaml.safe_load("1e-8") == "1e-8", "PyYAML's own loader is not changed for other code"
    with pytest.raises(UserError, match="could not determine a constructor"):
        parse_yaml("!!python/object/apply:os.system [echo hi]", "x")


# ---- handbook configs: two keys for one fact ----

FLAT = """\
model_name_or_path: some/model
output_dir: {out}
"""


def test_a_handbook_config_with_mixer_and_mixture_is_refused(cli, write_recipe, tmp_path):
    text = FLAT.format(out=tmp_path / "out") + (
        "dataset_mixer:\n  a/b: 1.0\ndataset_mixture:\n  datasets:\n    - id: c/d\n"
    )
    path = write_recipe(text)
    assert _refused(cli, path) == [
        f"error: {path}: dataset_mixer: gives the data, as dataset_mixture does; keep dataset_mixture (the current"
        " handbook's form) and remove dataset_mixer (the old handbook's form)"
    ]


def test_renamed_and_current_keys_for_one_field_are_refused_saying_which_to_keep(cli, write_recipe, tmp_path):
    text = FLAT.format(out=tmp_path / "out") + (
        "dataset_name: a/b\nmax_seq_length: 128\nmax_length: 256\ntorch_dtype: bfloat16\ndtype: float32\n"
        "bf16: true\nfp16: true\n"
    )
    path = write_recipe(text)
    assert _refused(cli, path) == [
        f"error: {path}: max_length: sets {METHOD}.max_length, as max_seq_length does; keep max_length and remove"
        " max_seq_length (TRL 0.20 renamed it max_length)",
        f"error: {path}: dtype: sets model.dtype, as torch_dtype does; keep dtype and remove torch_dtype (its older"
        " name)",
        f"error: {path}: fp16: sets training.mixed_precision, as bf16 does; keep one of them",
    ]


def test_bf16_and_fp16_both_off_is_one_fact_not_two(write_recipe, tmp_path):
    path = write_recipe(FLAT.format(out=tmp_path / "out") + "dataset_name: a/b\nbf16: false\nfp16: false\n")
    resolved = resolve_recipe(METHOD, str(path), mirrors={})
    assert resolved.recipe.training.mixed_precision == "no"


# ---- a pipeline rerun with changed settings ----


@pytest.fixture
def frozen_runs(monkeypatch):
    """Stand-in for training: freeze the recipe as a real run does, then mark it finished."""
    from alignkit.launch.start import freeze

    trained: list[str] = []

    def fake_run(resolved, plan, options, *, overwrite=False, argv=None, echo=print):
        freeze(resolved, plan, ["alignkit"], previous=None).mark_finished({})
        trained.append(resolved.output_dir.name)

    monkeypatch.setattr("alignkit.launch.start.start_training", fake_run)
    return trained


def test_a_changed_set_on_finished_stages_is_refused_naming_stage_and_field(cli, frozen_runs, tmp_path):
    from alignkit.pipeline.spec import load_pipeline

    stages = [stage.name for stage in load_pipeline("gpt2-nl").stages]
    assert cli("run", "--recipe", "gpt2-nl", "-o", tmp_path).exit_code == 0
    assert frozen_runs == stages
    same = cli("run", "--recipe", "gpt2-nl", "-o", tmp_path)
    assert same.exit_code == 0 and frozen_runs == stages, "an unchanged rerun still skips every stage"

    second = stages[1]
    for extra in ([], ["--dry-run"]):
        changed = cli("run", "--recipe", "gpt2-nl", "-o", tmp_path, "--set", f"{second}:training.seed=7", *extra)
        assert changed.exit_code == 2, changed.output
        out = tmp_path / second
        assert changed.stderr.strip().splitlines() == [
            f"error: {out}: stage {second} is finished, but with other settings than this run gives it (changed:"
            f" training.seed), so it would be skipped unchanged; pass --overwrite to retrain every stage, remove"
            f" {out} to retrain it, or rerun without the change"
        ]
    assert frozen_runs == stages, "nothing trained"


# ---- data rows ----


def _prepare(tmp_path, rows):
    from test_data_formats import prepare

    return prepare(tmp_path, rows, method=METHOD)


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def test_an_unknown_role_is_refused_naming_the_row_from_one(tmp_path):
    wizard = {"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "abracadabra"}]}
    with pytest.raises(UserError) as err:
        _prepare(tmp_path, [GOOD, GOOD, wizard])
    assert str(err.value) == (
        f"{tmp_path / 'rows.jsonl'}: data.datasets.0: row 3: messages[1].role is 'wizard'; use one of system, user,"
        " assistant, tool, developer, ipython"
    )


def test_null_content_is_refused_naming_the_row(tmp_path):
    empty = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]}
    with pytest.raises(UserError) as err:
        _prepare(tmp_path, [empty, GOOD])
    assert str(err.value) == (
        f"{tmp_path / 'rows.jsonl'}: data.datasets.0: row 1: messages[1].content is null; give the message's text"
        " (an empty string for an empty turn)"
    )


def test_null_sharegpt_value_is_refused_and_known_names_still_read():
    from alignkit.data import formats

    with pytest.raises(formats.RowError, match=r"^conversations\[0\].value is null"):
        formats.sharegpt_messages([{"from": "human", "value": None}])
    turns = [
        {"role": "human", "content": "hi"},
        {"role": "model", "content": ""},
        {"role": "developer", "content": "x"},
    ]
    assert [m["role"] for m in formats.messages_of(turns, "messages")] == ["user", "assistant", "developer"]
    call = {"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]}
    assert formats.messages_of([call], "messages")[0]["content"] == "", "a tool call's turn may have no text"


# ---- a run that diverges ----


def _logged(guard, step: int, optimizer=None, **logs):
    """What the trainer passes a callback when it logs at `step` (the guard reads no argument or control)."""
    return guard.on_log(None, SimpleNamespace(global_step=step), None, logs=logs, optimizer=optimizer)


def test_the_guard_stops_at_the_first_non_finite_loss_or_gradient_norm():
    from alignkit.train.guard import Diverged, DivergenceGuard

    guard = DivergenceGuard()
    _logged(guard, 1, loss=2.5, grad_norm=1.0)
    _logged(guard, 2, loss=2.4, grad_norm=0.9, learning_rate=math.inf)  # only the loss and gradient norm count
    with pytest.raises(Diverged) as err:
        _logged(guard, 12, loss=math.nan, grad_norm=math.inf)
    assert isinstance(err.value, RunError) and err.value.exit_code == 1
    assert str(err.value) == (
        "training diverged at step 12 (finite at step 2, the last one logged): loss is nan, grad_norm is inf; lower"
        " training.learning_rate (keep training.max_grad_norm above 0; train in bf16 or fp32 rather than fp16),"
        " then start over with --overwrite"
    )
    with pytest.raises(Diverged, match=r"^training diverged at step 3: eval_loss is -inf;"):
        _logged(DivergenceGuard(), 3, eval_loss=-math.inf)


def test_the_guard_lets_fp16_loss_scaling_skip_a_step():
    from alignkit.train.guard import Diverged, DivergenceGuard

    class Skipped:
        step_was_skipped = True

    guard = DivergenceGuard()
    _logged(guard, 5, optimizer=Skipped(), loss=3.0, grad_norm=math.inf)  # the scaler skipped it: no harm done
    with pytest.raises(Diverged, match="at step 6: loss is nan"):
        _logged(guard, 6, optimizer=Skipped(), loss=math.nan, grad_norm=math.inf)


@pytest.mark.slow
def test_a_diverging_run_exits_1_at_its_step_and_is_not_finished(cli, tiny_model_dir, tmp_path):
    from test_hardening_runs import _training_recipe

    out = tmp_path / "run"
    recipe = _training_recipe(tmp_path, tiny_model_dir, out, learning_rate=1e30, max_grad_norm=0.0)
    result = cli(METHOD, "--recipe", recipe)
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged at step 2: "), result.stderr
    assert "grad_norm is nan" in last and "lower training.learning_rate" in last
    assert json.loads((out / RUN_FILE).read_text())["finished"] is False
    assert not (out / "model.safetensors").exists() and not (out / "README.md").exists()
    assert (out / RECIPE_FILE).is_file()
    assert "training diverged at step 2" in (out / "alignkit.log").read_text()
