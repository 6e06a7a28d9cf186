"""The lm-evaluation-harness part of `alignkit eval` (alignkit.evaluation.harness): tasks refused before any
weights load, and a local multiple-choice task scored on the tiny model exactly as lm-eval's own CLI scores
it, for a model folder and for LoRA adapters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.errors import Problem, UserError
from alignkit.evaluation.harness import INSTALL, check_tasks, run_harness

# Questions in the tiny tokenizer's words, 2 to 4 choices each; the choices differ in length, so the accuracy
# normalised by length (acc_norm) can differ from the plain one.
QUIZ = [
    ("what is one plus one ?", ["two", "three"], 0),
    ("what is two plus two ?", ["three", "four", "five"], 1),
    ("what is the sum of three and four ?", ["seven", "six", "eight", "nine"], 0),
    ("is the sun red or blue ?", ["red", "blue"], 0),
    ("what is five minus two ?", ["two", "three"], 1),
    ("is rain good or bad ?", ["a good day", "bad"], 0),
    ("what is six plus one ?", ["eight", "seven", "five"], 1),
    ("is the answer yes or no ?", ["yes", "no"], 0),
    ("what is ten minus five ?", ["four", "five", "six"], 1),
    ("what is the sum of one and two ?", ["three", "four"], 0),
    ("are cats dogs ?", ["yes", "no"], 1),
    ("is the text right or wrong ?", ["right", "wrong"], 0),
    ("what is nine minus one ?", ["six", "seven", "ten", "eight"], 3),
    ("is the night green or blue ?", ["green", "blue"], 1),
    ("what is 4 - 4 ?", ["0", "1", "2"], 0),
    ("please add two and five", ["seven", "three and four", "nine"], 0),
]
TASK = "alignkit_quiz"
WHERE = "eval.harness.tasks"


@pytest.fixture(scope="module")
def quiz(tmp_path_factory) -> Path:
    """A multiple-choice task over a local JSONL file, its prompt settings in a sibling file it includes."""
    folder = tmp_path_factory.mktemp("tasks")
    rows = [{"question": q, "choices": choices, "label": label} for q, choices, label in QUIZ]
    (folder / "quiz.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (folder / "_quiz_prompt.yaml").write_text(
        'doc_to_text: "question: {{question}}\\nanswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n',
        encoding="utf-8",
    )
    task = folder / "quiz.yaml"
    task.write_text(
        f"task: {TASK}\n"
        "include: _quiz_prompt.yaml\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'quiz.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
        "metadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    return task


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_task_files_are_checked_without_lm_evals_task_index(tmp_path, monkeypatch, quiz):
    """Files alone are judged from the files: lm-eval's TaskManager (seconds to build) is never made."""
    import lm_eval.tasks

    def refuse(*args, **kwargs):
        raise AssertionError("a TaskManager was built")

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", refuse)
    monkeypatch.chdir(tmp_path)
    tasks = [
        str(quiz),
        str(tmp_path / "nope.yaml"),
        str(tmp_path),
        _write(tmp_path / "notes.txt", "task: x\n"),
        _write(
            tmp_path / "far.yaml", "task: far\ndataset_path: json\ndataset_kwargs: {data_files: {test: rows.jsonl}}\n"
        ),
        _write(tmp_path / "gone.yaml", f"task: gone\ndataset_kwargs:\n  data_files: [{tmp_path / 'a.jsonl'}]\n"),
        _write(tmp_path / "inc.yaml", "task: inc\ninclude: _missing.yaml\n"),
        _write(tmp_path / "bare.yaml", "dataset_path: json\n"),
        _write(tmp_path / "folder.yaml", "task: folder\ndataset_path: ./no_such_dataset\n"),
    ]
    assert check_tasks(tasks, source="recipe.yaml", where=WHERE) == [
        Problem(
            "recipe.yaml",
            f"no such task file: {tmp_path / 'nope.yaml'}; give an lm-eval task name or the path of a task YAML file",
            f"{WHERE}.1",
        ),
        Problem("recipe.yaml", f"{tmp_path} is not a task YAML file (.yaml or .yml)", f"{WHERE}.2"),
        Problem("recipe.yaml", f"{tmp_path / 'notes.txt'} is not a task YAML file (.yaml or .yml)", f"{WHERE}.3"),
        Problem(
            "recipe.yaml",
            f"its data file rows.jsonl does not exist (read from the working directory, {tmp_path})",
            f"{WHERE}.4",
        ),
        Problem("recipe.yaml", f"its data file {tmp_path / 'a.jsonl'} does not exist", f"{WHERE}.5"),
        Problem(
            "recipe.yaml",
            f"it includes {tmp_path / '_missing.yaml'}, which does not exist (an include is read beside its file)",
            f"{WHERE}.6",
        ),
        Problem(
            "recipe.yaml",
            "it names no task: give `task: NAME` (or `group: NAME` with its tasks under `task:`)",
            f"{WHERE}.7",
        ),
        Problem(
            "recipe.yaml",
            f"its data file ./no_such_dataset does not exist (read from the working directory, {tmp_path})",
            f"{WHERE}.8",
        ),
    ]


def test_names_lm_eval_does_not_know_are_refused_with_the_closest_ones(tmp_path, quiz):
    """One TaskManager judges the names, with the folders of the YAML files on its search path: a group file in
    another folder than the quiz's may name it, and a member misspelt is found."""
    group = _write(tmp_path / "quiz_group.yaml", f"group: quizzes\ntask:\n  - {TASK}\n  - alignkit_quizz\n")
    tasks = ["arc_eazy", "hellaswag", "zzqx_nothing", str(quiz), group]
    problems = check_tasks(tasks, source="r.yaml", where=WHERE)
    assert [problem.path for problem in problems] == [f"{WHERE}.0", f"{WHERE}.2", f"{WHERE}.4"]
    assert problems[0].message.startswith("'arc_eazy' is no task, group or tag lm-eval knows; did you mean arc_easy")
    assert problems[1].message == (
        "'zzqx_nothing' is no task, group or tag lm-eval knows; `lm-eval ls tasks` lists the names it knows"
    )
    assert problems[2].message == (
        "its group 'quizzes' lists 'alignkit_quizz', which is no task, group or tag lm-eval knows; "
        f"did you mean {TASK}?"
    )


def test_without_lm_eval_the_tasks_are_refused_with_the_install_command(monkeypatch, tiny_model_dir, quiz):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what an environment without lm-eval gives
    expected = (
        "lm-eval (EleutherAI's lm-evaluation-harness) is not installed; `pip install 'alignkit[eval]'` installs it"
    )
    assert expected == INSTALL
    assert check_tasks(["arc_easy"], source="recipe.yaml", where=WHERE) == [Problem("recipe.yaml", expected, WHERE)]
    with pytest.raises(UserError) as caught:
        run_harness(str(tiny_model_dir), [str(quiz)], tasks_field=WHERE)
    assert caught.value.problems == [Problem("alignkit eval", expected, WHERE)]


def test_a_model_folder_that_is_none_and_a_missing_task_file_are_refused_together(tmp_path):
    with pytest.raises(UserError) as caught:
        run_harness(str(tmp_path / "runs" / "sft"), [str(tmp_path / "quiz.yaml")], source="eval.yaml")
    assert caught.value.problems == [
        Problem(
            "eval.yaml",
            f"no such folder: {tmp_path / 'runs' / 'sft'}; give a model folder (config.json), "
            "a LoRA adapter folder (adapter_config.json) or a Hub id",
            "model",
        ),
        Problem(
            "eval.yaml",
            f"no such task file: {tmp_path / 'quiz.yaml'}; give an lm-eval task name or the path of a task YAML file",
            "tasks.0",
        ),
    ]


def test_a_model_folder_whose_weights_do_not_load_is_a_user_error_naming_it(tmp_path, tiny_model_dir, quiz, capfd):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((tiny_model_dir / name).read_bytes())
    with pytest.raises(UserError) as caught:
        run_harness(str(broken), [str(quiz)])
    [problem] = caught.value.problems
    assert (problem.source, problem.path) == ("alignkit eval", "model")
    assert problem.message.startswith(f"cannot load {str(broken)!r}: ")
    assert capfd.readouterr().err == ""  # an alignkit error says it all: lm-eval's log stays held back


def _lm_eval_cli(model: Path, tasks: Path, out: Path, *, chat: bool) -> dict:
    """What `lm_eval` run as a program reports for the quiz on `model`, with run_harness's batch size and seed."""
    command = [
        *(sys.executable, "-m", "lm_eval", "--model", "hf"),
        *("--model_args", f"pretrained={model},dtype=float32", "--tasks", TASK, "--include_path", str(tasks)),
        *("--output_path", str(out), "--device", "cpu", "--batch_size", "8", "--seed", "1234"),
        *(["--apply_chat_template"] if chat else []),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=out.parent)
    [results] = out.glob("**/results_*.json")
    return json.loads(results.read_text(encoding="utf-8"))


def _values(outcome) -> dict[str, tuple]:
    return {score.metric: (score.value, score.stderr, score.samples) for score in outcome.results}


@pytest.mark.slow
def test_a_local_task_scores_exactly_what_the_lm_eval_cli_scores(tmp_path, tiny_model_dir, quiz, capfd):
    outcome = run_harness(str(tiny_model_dir), [str(quiz)])
    assert capfd.readouterr().err == ""  # lm-eval's log and progress bars were held back
    reported = _lm_eval_cli(tiny_model_dir, quiz.parent, tmp_path / "cli", chat=True)
    theirs = reported["results"][TASK]
    ours = _values(outcome)
    assert ours == {
        "acc": (theirs["acc,none"], theirs["acc_stderr,none"], len(QUIZ)),
        "acc_norm": (theirs["acc_norm,none"], theirs["acc_norm_stderr,none"], len(QUIZ)),
    }
    assert reported["n-samples"][TASK]["effective"] == len(QUIZ)
    assert 0 < ours["acc"][0] < 1  # neither all nor none right: the comparison can tell scorings apart
    assert outcome.num_fewshot == {TASK: 0} == reported["n-shot"]
    assert outcome.versions["tasks"] == {TASK: 1.0} == reported["versions"]
    assert outcome.versions["lm_eval"] == reported["lm_eval_version"]
    # The tiny tokenizer has a ChatML template, so it was applied unasked, as --apply_chat_template applies it.
    assert outcome.config["apply_chat_template"] is True
    assert reported["chat_template"] is not None
    assert {score.higher_is_better for score in outcome.results} == {True}


def _lora(base_dir: Path, folder: Path, *, new_token: str | None = None) -> tuple[Path, Path]:
    """A LoRA adapter of random (not zero) weights on the tiny model, and the model merged from it.

    With `new_token`, the token is added and the embeddings grown to a multiple of 8 as alignkit's training
    grows them, and the adapter saves the whole embedding and output matrices and the tokenizer, as training does.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    whole = None
    if new_token is not None:
        tokenizer.add_tokens([new_token], special_tokens=True)
        base.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)
        whole = ["embed_tokens", "lm_head"]
    config = LoraConfig(
        task_type="CAUSAL_LM", target_modules="all-linear", init_lora_weights=False, modules_to_save=whole
    )
    adapted = get_peft_model(base, config)
    adapted.save_pretrained(folder / "adapter")
    adapted.merge_and_unload().save_pretrained(folder / "merged")
    tokenizer.save_pretrained(folder / "merged")
    if new_token is not None:
        tokenizer.save_pretrained(folder / "adapter")
    return folder / "adapter", folder / "merged"


@pytest.mark.slow
def test_a_lora_adapter_is_scored_on_its_base_as_the_model_merged_from_it(tmp_path, tiny_model_dir, quiz):
    adapter, merged = _lora(tiny_model_dir, tmp_path)
    assert not (adapter / "tokenizer_config.json").exists()  # the base's tokenizer is used
    runs = {
        name: run_harness(str(path), [str(quiz)], apply_chat_template=False)
        for name, path in (("adapter", adapter), ("merged", merged), ("base", tiny_model_dir))
    }
    assert _values(runs["adapter"]) == _values(runs["merged"])
    assert _values(runs["adapter"]) != _values(runs["base"])  # the adapter's weights were applied
    assert (runs["adapter"].config["model"], runs["adapter"].config["base_model"]) == (
        str(adapter),
        str(tiny_model_dir),
    )
    assert runs["adapter"].config["apply_chat_template"] is False


@pytest.mark.slow
def test_an_adapter_trained_with_an_added_token_is_scored_on_a_base_grown_as_training_grew_it(
    tmp_path, tiny_model_dir, quiz, monkeypatch
):
    """The adapter saved 88-row matrices for 82 tokens; lm-eval's own `peft` loading grows the base to 82 rows."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from alignkit.evaluation import harness

    adapter, merged = _lora(tiny_model_dir, tmp_path, new_token="<|tool|>")
    tokens = len(AutoTokenizer.from_pretrained(adapter))
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as saved:
        rows = {saved.get_slice(name).get_shape()[0] for name in saved.keys() if "lora_" not in name}  # noqa: SIM118
    assert (tokens, rows) == (82, {88})
    scored, expected = (run_harness(str(path), [str(quiz)]) for path in (adapter, merged))
    assert _values(scored) == _values(expected)
    assert scored.config["apply_chat_template"] is True  # the adapter's own tokenizer, with the ChatML template
    monkeypatch.setattr(harness, "_saved_vocab_rows", lambda adapter: None)  # leave the loading to lm-eval
    with pytest.raises(UserError) as caught:
        run_harness(str(adapter), [str(quiz)])
    [problem] = caught.value.problems
    assert problem.message.startswith(f"cannot load the adapter {str(adapter)!r} on {str(tiny_model_dir)!r}: ")
    assert problem.message.endswith(
        "copying a param with shape torch.Size([88, 32]) from checkpoint, "
        "the shape in current model is torch.Size([82, 32])."
    )


def test_importing_the_harness_loads_neither_lm_eval_nor_the_training_stack():
    heavy = "{'lm_eval', 'torch', 'transformers', 'datasets', 'peft'}"
    script = f"import sys\nimport alignkit.evaluation.harness\nprint(sorted({heavy} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_chat_template_asked_for_that_the_tokenizer_lacks_is_refused(tmp_path, tiny_model_dir, quiz):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(UserError) as caught:
        run_harness(str(plain), [str(quiz)], apply_chat_template=True)
    assert caught.value.problems == [
        Problem(
            "alignkit eval",
            f"the tokenizer of {plain} has no chat template to apply; do not ask for apply_chat_template",
            "model",
        )
    ]


# --- `alignkit eval --model ... --tasks ...`: the one-off form of the command -------------------------------


@pytest.mark.slow
def test_the_one_off_command_scores_models_side_by_side(cli, tmp_path, tiny_model_dir, quiz):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    out = tmp_path / "card"
    flags = ("--model", tiny_model_dir, "--model", other, "--tasks", quiz, "--output-dir", out)
    result = cli("eval", *flags, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document == json.loads((out / "eval_results.json").read_text(encoding="utf-8"))
    assert [m["name"] for m in document["models"]] == [Path(tiny_model_dir).name, "other"]
    direct = _values(run_harness(str(tiny_model_dir), [str(quiz)]))
    for row in document["results"]:
        assert (row["part"], row["task"]) == ("harness", TASK)
        assert (row["value"], row["stderr"], row["samples"]) == direct[row["metric"]]  # same weights, same scores
    assert len(document["results"]) == 4  # acc and acc_norm of each model
    again = cli("eval", *flags)
    assert again.exit_code == 0 and again.output.count("reused from the cache") == 2
    assert "alignkit_quiz" in again.stdout  # the table


def test_the_one_off_command_refuses_an_unknown_task_and_a_missing_flag(cli, tmp_path, tiny_model_dir):
    unknown = cli("eval", "--model", tiny_model_dir, "--tasks", "arc_eazy", "--output-dir", tmp_path / "x")
    assert unknown.exit_code == 2
    assert "eval.harness.tasks.0: 'arc_eazy' is no task, group or tag lm-eval knows; did you mean arc_easy" in (
        " ".join(unknown.stderr.split())
    )
    assert not (tmp_path / "x").exists()  # refused before anything was written
    no_tasks = cli("eval", "--model", tiny_model_dir)
    assert no_tasks.exit_code == 2 and "--tasks: give the lm-eval tasks with --tasks" in no_tasks.stderr
    mirror = cli("eval", "--model", tiny_model_dir, "--tasks", "arc_easy", "--mirror", "m.yaml")
    assert mirror.exit_code == 2 and "--mirror: applies to --recipe" in mirror.stderr
    both = cli("eval", "--recipe", "x.yaml", "--model", tiny_model_dir, "--tasks", "arc_easy")
    assert both.exit_code == 2 and "give a recipe (--recipe) or models and tasks (--model, --tasks), not both" in (
        both.stderr
    )
