"""Scorers: recipe shapes and their errors, the rule, Python and reward-model scorers, the pre-load checks,
the weighted total, the reasoning scorers (each against TRL's reward function of the same purpose), and the
scorers as TRL reward functions."""

from __future__ import annotations

import json
import os
import sys

import pytest
from pydantic import Field, ValidationError

from alignkit.errors import UserError
from alignkit.recipe.sections import Section
from alignkit.scoring.build import build_scorers, close_scorers, weighted_total
from alignkit.scoring.custom import PythonScorer, load_function
from alignkit.scoring.rules import ExactMatchScorer, RegexScorer, answers_match, normalise
from alignkit.scoring.specs import (
    ExactMatchSpec,
    MathSpec,
    OverlongSpec,
    PythonSpec,
    RegexSpec,
    RewardModelSpec,
    ScorerList,
    ThinkFormatSpec,
    check_scorers,
    labels,
)


class Holder(Section):
    scorers: ScorerList = Field(min_length=1)


def parse(*items):
    return Holder.model_validate({"scorers": list(items)}).scorers


def errors(*items) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as caught:
        parse(*items)
    return [(e["loc"], e["msg"].removeprefix("Value error, ")) for e in caught.value.errors(include_url=False)]


KINDS = "reward_model, exact_match, regex, python, math, think_format or overlong"

# ---------------------------------------------------------------------------------------------- recipe shapes


@pytest.mark.parametrize(
    ("shorthand", "mapping", "expected"),
    [
        ({"reward_model": "runs/rm"}, {"reward_model": {"path": "runs/rm"}}, RewardModelSpec(path="runs/rm")),
        ({"exact_match": "answer"}, {"exact_match": {"column": "answer"}}, ExactMatchSpec(column="answer")),
        ({"regex": r"^\d+$"}, {"regex": {"pattern": r"^\d+$"}}, RegexSpec(pattern=r"^\d+$")),
        ({"python": "pkg.mod:fn"}, {"python": {"function": "pkg.mod:fn"}}, PythonSpec(function="pkg.mod:fn")),
        ({"math": "answer"}, {"math": {"column": "answer"}}, MathSpec(column="answer")),
        ({"think_format": True}, {"think_format": {}}, ThinkFormatSpec()),
        ({"think_format": None}, {"think_format": {"weight": 1}}, ThinkFormatSpec()),
    ],
)
def test_shorthand_and_mapping_give_the_same_spec(shorthand, mapping, expected):
    assert parse(shorthand) == parse(mapping) == [expected]
    assert expected.weight == 1.0


def test_reward_model_settings_and_defaults():
    full = {"path": "runs/rm", "batch_size": 4, "max_length": 2048, "revision": "v2"}
    (spec,) = parse({"reward_model": full})
    assert (spec.path, spec.batch_size, spec.max_length, spec.revision) == ("runs/rm", 4, 2048, "v2")
    (default,) = parse({"reward_model": "runs/rm"})
    assert (default.batch_size, default.max_length, default.revision) == (16, None, "main")


def test_weight_beside_the_kind_equals_weight_inside_it():
    beside = parse({"exact_match": "answer", "weight": 2}, {"regex": "a", "weight": -0.5})
    inside = parse({"exact_match": {"column": "answer", "weight": 2}}, {"regex": {"pattern": "a", "weight": -0.5}})
    assert beside == inside
    assert [spec.weight for spec in beside] == [2.0, -0.5]


def test_a_spec_dumps_to_the_mapping_form_and_validates_back():
    specs = parse({"reward_model": "runs/rm"}, {"exact_match": "answer", "weight": 2})
    dumped = Holder(scorers=specs).model_dump(mode="json")["scorers"]
    assert dumped == [
        {"reward_model": {"path": "runs/rm", "revision": "main", "batch_size": 16, "max_length": None, "weight": 1.0}},
        {"exact_match": {"column": "answer", "weight": 2.0}},
    ]
    assert parse(*dumped) == specs
    assert ExactMatchSpec.model_validate(specs[1].model_dump()) == specs[1]


@pytest.mark.parametrize(
    ("item", "loc", "message"),
    [
        (
            {"exact_match": "a", "regex": "b"},
            ("scorers", 0),
            f"one item holds exact_match and regex; give each scorer its own list item (kinds: {KINDS})",
        ),
        (
            {"exat_match": "a"},
            ("scorers", 0),
            f"unknown key 'exat_match'; did you mean exact_match? An item holds one scorer kind ({KINDS}) and,"
            " optionally, weight",
        ),
        (
            {"exact_match": "a", "wieght": 2},
            ("scorers", 0),
            f"unknown key 'wieght' beside exact_match; did you mean weight? An item holds one scorer kind ({KINDS})"
            " and, optionally, weight",
        ),
        (
            {"bleu": "a"},
            ("scorers", 0),
            f"unknown key 'bleu'; an item holds one scorer kind ({KINDS}) and, optionally, weight",
        ),
        ({"weight": 2}, ("scorers", 0), f"no scorer kind given; add one of {KINDS}"),
        (
            "regex",
            ("scorers", 0),
            f"a scorer is a mapping of one kind ({KINDS}) to its settings, such as `exact_match: answer`",
        ),
        (
            {"exact_match": "a", "weight": 0},
            ("scorers", 0, "exact_match", "weight"),
            "a weight of 0 scores nothing; remove the scorer",
        ),
        (
            {"regex": {"pattern": "a", "weight": float("inf")}},
            ("scorers", 0, "regex", "weight"),
            "must be a finite number",
        ),
        (
            {"regex": "(unclosed"},
            ("scorers", 0, "regex", "pattern"),
            "not a valid regular expression: missing ), unterminated subpattern at position 0",
        ),
        (
            {"python": "mypkg.rewards.brevity"},
            ("scorers", 0, "python", "function"),
            "must name a function as package.module:function, such as mypkg.rewards:brevity",
        ),
        (
            {"exact_match": {"column": "a", "weight": 1}, "weight": 2},
            ("scorers", 0, "exact_match"),
            "weight is given both beside exact_match and inside it; give it once",
        ),
        (
            {"regex": 5},
            ("scorers", 0, "regex"),
            "regex takes its pattern as a string, or a mapping of its settings (given: 5)",
        ),
        ({"reward_model": None}, ("scorers", 0, "reward_model", "path"), "Field required"),
        (
            {"reward_model": {"path": "x", "batch_size": 0}},
            ("scorers", 0, "reward_model", "batch_size"),
            "must be a whole number from 1 to 100,000",
        ),
        ({"exact_match": {"colum": "a"}}, ("scorers", 0, "exact_match"), "[colum] unknown key; did you mean column?"),
        ({"exact_match": {}}, ("scorers", 0, "exact_match", "column"), "Field required"),
        ({"math": {}}, ("scorers", 0, "math", "column"), "Field required"),
        (
            {"think_format": False},
            ("scorers", 0, "think_format"),
            "think_format: false scores nothing; remove the scorer",
        ),
        (
            {"think_format": "yes"},
            ("scorers", 0, "think_format"),
            "think_format takes true, or a mapping of its settings such as {weight: 0.5} (given: 'yes')",
        ),
        ({"overlong": 4096}, ("scorers", 0, "overlong"), "overlong takes a mapping of its settings (given: 4096)"),
        ({"overlong": {"max_completion_length": 4096}}, ("scorers", 0, "overlong", "buffer"), "Field required"),
        (
            {"overlong": {"max_completion_length": 100, "buffer": 101}},
            ("scorers", 0, "overlong"),
            "[buffer] 101 exceeds max_completion_length (100); the penalty starts at max_completion_length - buffer"
            " tokens",
        ),
        (
            {"overlong": {"max_completion_length": 0, "buffer": 0}},
            ("scorers", 0, "overlong", "max_completion_length"),
            "must be a whole number from 1 to 16,777,216",
        ),
    ],
)
def test_a_wrong_item_is_refused_under_its_kind(item, loc, message):
    assert errors(item)[0] == (loc, message)


def test_the_error_names_the_item_it_is_in():
    assert errors({"regex": "a"}, {"exact_match": {}})[0][0] == ("scorers", 1, "exact_match", "column")


@pytest.mark.parametrize(
    ("item", "line"),
    [
        (
            {"exact_match": "answer", "weight": 0},
            "scorers.1.exact_match.weight: a weight of 0 scores nothing; remove the scorer (given: 0)",
        ),
        (
            {"reward_model": {"path": "runs/rm", "batchsize": 4}},
            "scorers.1.reward_model.batchsize: unknown key; did you mean batch_size?",
        ),
        (
            {"exact_match": {"column": "answer", "strict": True}},
            "scorers.1.exact_match.strict: unknown key; valid keys here: column, weight",
        ),
    ],
)
def test_recipe_problems_read_the_path_through_the_kind(item, line):
    from alignkit.recipe.problems import problems_from_validation

    with pytest.raises(ValidationError) as caught:
        parse({"regex": "a"}, item)
    (problem,) = problems_from_validation(caught.value, Holder, source="r.yaml", method="sft")
    assert str(problem) == f"r.yaml: {line}"


def test_labels_are_unique_and_columns_are_the_ones_read():
    specs = parse(
        {"reward_model": "a"}, {"exact_match": "answer"}, {"regex": "x"}, {"python": "m.rewards:brevity"},
        {"regex": "y"}, {"exact_match": "answer"}, {"regex": "z"},
    )  # fmt: skip
    assert labels(specs) == [
        "reward_model", "exact_match:answer", "regex", "python:brevity", "regex#2", "exact_match:answer#2", "regex#3",
    ]  # fmt: skip
    assert [set(spec.columns) for spec in specs[:4]] == [set(), {"answer"}, set(), set()]


# ---------------------------------------------------------------------------------------------- rule scorers


@pytest.mark.parametrize(
    ("completion", "reference", "match"),
    [
        ("Paris", "paris", True),
        ("  PARIS.  ", "Paris", True),
        ('"Paris"', "paris", True),
        ("'Paris.'", "Paris", True),
        ("New   York\ncity", "new york City", True),
        ("Straße", "STRASSE", True),  # casefold, not lower
        ("Paris", "Lyon", False),
        ("Paris, France", "Paris", False),
        ("57", "57.0", True),
        (" 57 ", "57", True),
        ("57.", "57", True),
        ("1,000", "1000", True),
        ("1,000,000.5", "1000000.5", True),
        ("1,00", "100", False),  # a comma that groups no thousands is no separator
        ("-3", "-3.00", True),
        ("+3", "3", True),
        ("-3", "3", False),
        ("0.1", "0.10000000001", True),  # within the relative tolerance of 1e-9
        ("0.1", "0.1001", False),
        ("1e3", "1000", True),
        ("57", 57, True),
        ("57.0", 57, True),
        ("57", 57.5, False),
        ("0.30000000000000004", 0.3, True),
        ("57 apples", 57, False),
        ("nine", ["9", "nine"], True),
        ("9", ["nine", 9], True),
        ("ten", ["9", "nine"], False),
        ("x", [], False),
        ("true", True, True),
    ],
)
def test_exact_match_normalises(completion, reference, match):
    assert answers_match(completion, reference) is match


def test_normalise_strips_quotes_and_the_final_period_in_any_order():
    assert normalise(' "The  Answer." ') == "the answer"
    assert normalise('"the answer".') == "the answer"
    assert normalise("3.5") == "3.5"


def test_exact_match_scorer_reads_the_column_and_skips_rows_without_a_reference():
    scorer = ExactMatchScorer(ExactMatchSpec(column="answer", weight=2), "exact_match:answer")
    rows = [{"answer": "5"}, {"answer": 5}, {"answer": None}, {}, {"answer": ["4", "5"]}]
    values = scorer.score([[]] * 5, ["5.0", "six", "5", "5", "5"], rows)
    assert values == [1.0, 0.0, None, None, 1.0]
    assert (scorer.label, scorer.weight) == ("exact_match:answer", 2.0)


def test_exact_match_refuses_a_mapping_reference():
    scorer = ExactMatchScorer(ExactMatchSpec(column="answer"), "exact_match:answer")
    with pytest.raises(UserError) as caught:
        scorer.score([[]], ["5"], [{"answer": {"value": 5}}])
    assert str(caught.value) == (
        "prompt rows: answer: holds a mapping; exact_match compares the completion with a string, a number or a list"
        " of them: set column to the one holding the reference answer"
    )


def test_regex_scorer_searches_the_completion():
    scorer = RegexScorer(RegexSpec(pattern=r"^\d+$"), "regex")
    assert scorer.score([[]] * 4, ["42", "42 apples", "", "x\n7"], [{}] * 4) == [1.0, 0.0, 0.0, 0.0]
    unanchored = RegexScorer(RegexSpec(pattern=r"(?i)answer: \d"), "regex")
    assert unanchored.score([[]] * 2, ["so the ANSWER: 7", "answer: seven"], [{}] * 2) == [1.0, 0.0]


# ---------------------------------------------------------------------------------------------- python scorer

REWARDS = """
CALLS = []

def brevity(prompts, completions, **columns):
    CALLS.append({"prompts": prompts, "completions": completions, **columns})
    return [-len(c[0]["content"]) for c in completions]

def one(completions, **kwargs):
    return [1.0]

def text(completions, **kwargs):
    return "good"

def nan(completions, **kwargs):
    return [0.5] + [float("nan")] * (len(completions) - 1)

def word(completions, **kwargs):
    return ["high"] * len(completions)

def maybe(completions, **kwargs):
    return (None, True, 2)

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def rewards_module(tmp_path, monkeypatch):
    """`scoring_test_rewards`, a module of reward functions importable from tmp_path (forgotten afterwards)."""
    (tmp_path / "scoring_test_rewards.py").write_text(REWARDS, encoding="utf-8")
    (tmp_path / "scoring_test_broken.py").write_text("import no_such_module_xyz\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "scoring_test_rewards"
    for name in ("scoring_test_rewards", "scoring_test_broken"):
        sys.modules.pop(name, None)


def python_scorer(name: str) -> PythonScorer:
    return PythonScorer(PythonSpec(function=f"scoring_test_rewards:{name}"), f"python:{name}")


def test_python_scorer_is_called_with_trl_reward_keywords(rewards_module):
    prompts = [[{"role": "user", "content": "2+3?"}], [{"role": "user", "content": "2+3?"}]]
    rows = [{"prompt": "2+3?", "answer": "5", "level": 1}, {"prompt": "2+3?", "answer": "5", "level": 1}]
    values = python_scorer("brevity").score(prompts, ["5", "it is 5"], rows)
    assert values == [-1.0, -7.0]
    (call,) = sys.modules[rewards_module].CALLS
    assert call == {
        "prompts": prompts,
        "completions": [[{"role": "assistant", "content": "5"}], [{"role": "assistant", "content": "it is 5"}]],
        "answer": ["5", "5"],
        "level": [1, 1],
    }


def test_python_scorer_keeps_none_and_takes_a_tuple(rewards_module):
    assert python_scorer("maybe").score([[]] * 3, ["a", "b", "c"], [{}] * 3) == [None, 1.0, 2.0]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("one", "returned 1 value for 3 completions; it must return one number (or None) per completion"),
        ("text", "returned a str ('good'), not a list; it must return one number (or None) per completion"),
        ("nan", "returned a float (nan) at index 1; each value must be a finite number or None"),
        ("word", "returned a str ('high') at index 0; each value must be a finite number or None"),
    ],
)
def test_python_scorer_refuses_what_is_not_one_number_per_completion(rewards_module, name, message):
    with pytest.raises(UserError) as caught:
        python_scorer(name).score([[]] * 3, ["a", "b", "c"], [{}] * 3)
    assert str(caught.value) == f"scoring_test_rewards:{name}: {message}"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "scoring_test_broken:f",
            "cannot import scoring_test_broken: ModuleNotFoundError: No module named 'no_such_module_xyz'; install it,"
            " or run from the folder that holds it (or add that folder to PYTHONPATH)",
        ),
        (
            "scoring_test_rewards:missing",
            "scoring_test_rewards has no attribute missing; define it there, or name a function it has",
        ),
        ("scoring_test_rewards:NOT_A_FUNCTION", "scoring_test_rewards:NOT_A_FUNCTION is an int, not a function"),
    ],
)
def test_a_python_target_that_does_not_load_is_refused(rewards_module, target, message):
    with pytest.raises(UserError) as caught:
        load_function(target)
    assert str(caught.value) == f"{target}: {message}"


def test_a_module_in_the_current_directory_is_found(tmp_path, monkeypatch):
    (tmp_path / "scoring_test_here.py").write_text("def f(completions, **kw):\n    return [1] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    # As under a console script: neither "" nor the current directory on the path (restored afterwards).
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    try:
        assert load_function("scoring_test_here:f")(completions=[[], []]) == [1, 1]
        assert sys.path[-1] == str(tmp_path)
    finally:
        sys.modules.pop("scoring_test_here", None)


def test_a_python_reward_must_take_trl_s_keyword_call(tmp_path, monkeypatch):
    (tmp_path / "scoring_test_signatures.py").write_text(
        "def fine(completions, answer, **kwargs):\n    return [1.0] * len(completions)\n"
        "def closed(prompts, completions):\n    return [1.0] * len(completions)\n"
        "def positional(completions, /, **kwargs):\n    return [1.0] * len(completions)\n"
    )
    monkeypatch.chdir(tmp_path)
    try:
        specs = parse(*({"python": f"scoring_test_signatures:{name}"} for name in ("fine", "closed", "positional")))
        problems = check_scorers(specs, None, where="grpo.rewards", source="r.yaml")
    finally:
        sys.modules.pop("scoring_test_signatures", None)
    assert [(p.path, p.message) for p in problems] == [
        (
            "grpo.rewards.1.python",
            "takes no **kwargs, but it is also given completion_ids, trainer_state and every prompt-row column by"
            " keyword: define it as `def closed(completions, **kwargs)` (prompts and the row columns arrive in"
            " kwargs)",
        ),
        (
            "grpo.rewards.2.python",
            "has positional-only parameters (completions), but it is called by keyword: define it as `def"
            " positional(completions, **kwargs)` (prompts and the row columns arrive in kwargs)",
        ),
    ]


# ---------------------------------------------------------------------------------------------- build and total


def test_weighted_total_counts_none_as_zero():
    scorers = build_scorers(parse({"regex": "5", "weight": 2}, {"exact_match": "answer", "weight": -1}))
    assert [scorer.label for scorer in scorers] == ["regex", "exact_match:answer"]
    values = {"regex": [1.0, 0.0, 1.0], "exact_match:answer": [1.0, None, 0.0]}
    assert weighted_total(scorers, values) == [1.0, 0.0, 2.0]
    with pytest.raises(ValueError, match="differ in length"):
        weighted_total(scorers, {"regex": [1.0], "exact_match:answer": [1.0, 0.0]})
    close_scorers(scorers)


def test_build_scorers_uses_the_labels_given():
    specs = parse({"regex": "a"}, {"regex": "b"})
    assert [scorer.label for scorer in build_scorers(specs, labels(specs))] == ["regex", "regex#2"]
    assert [scorer.label for scorer in build_scorers(specs, ["first", "second"])] == ["first", "second"]


# ---------------------------------------------------------------------------------------------- pre-load checks


def test_check_scorers_finds_a_missing_column_and_a_python_target_that_does_not_import(rewards_module):
    specs = parse(
        {"exact_match": "answer"}, {"regex": "a"}, {"python": "scoring_test_broken:f"},
        {"python": "scoring_test_rewards:brevity"}, {"exact_match": "solution"},
    )  # fmt: skip
    problems = check_scorers(specs, {"prompt", "solution"}, where="sample.scorers", source="r.yaml")
    assert [str(problem) for problem in problems] == [
        "r.yaml: sample.scorers.0.exact_match: the prompt rows have no column 'answer' (their columns: prompt,"
        " solution); set column to the one holding the reference answer",
        "r.yaml: sample.scorers.2.python: cannot import scoring_test_broken: ModuleNotFoundError: No module named"
        " 'no_such_module_xyz'; install it, or run from the folder that holds it (or add that folder to PYTHONPATH)",
    ]
    assert check_scorers(specs[:1], None, where="sample.scorers", source="r.yaml") == []


GIVE = "give a reward model (a sequence classifier with one output), such as a reward model alignkit trained"


def reward_problems(path) -> list[str]:
    specs = parse({"reward_model": str(path)})
    return [problem.message for problem in check_scorers(specs, set(), where="s", source="r.yaml")]


def test_check_scorers_refuses_a_causal_lm_as_reward_model(tiny_model_dir):
    assert reward_problems(tiny_model_dir) == [
        f"{tiny_model_dir} is a causal language model (LlamaForCausalLM), not a reward model; {GIVE}"
    ]


def test_check_scorers_reads_reward_model_folders(tmp_path):
    two = tmp_path / "two"
    two.mkdir()
    (two / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForSequenceClassification"], "id2label": {"0": "a", "1": "b"}})
    )
    one = tmp_path / "one"
    one.mkdir()
    (one / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForSequenceClassification"], "id2label": {"0": "a"}})
    )
    lm_adapter, rm_adapter, empty = tmp_path / "lm-adapter", tmp_path / "rm-adapter", tmp_path / "empty"
    for folder, task in ((lm_adapter, "CAUSAL_LM"), (rm_adapter, "SEQ_CLS")):
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"task_type": task, "base_model_name_or_path": "b"}))
    empty.mkdir()
    assert reward_problems(one) == reward_problems(rm_adapter) == []
    assert reward_problems(two) == [f"{two} is a sequence classifier with 2 outputs; a reward model has one: {GIVE}"]
    assert reward_problems(lm_adapter) == [
        f"{lm_adapter} is a LoRA adapter of a causal language model (task_type CAUSAL_LM), not of a reward model;"
        f" {GIVE}"
    ]
    assert reward_problems(empty) == [f"{empty} holds neither config.json nor adapter_config.json, so no model; {GIVE}"]
    assert reward_problems(tmp_path / "gone") == [f"no such folder: {tmp_path / 'gone'}; {GIVE}, or a Hub id"]
    assert reward_problems("./runs/rm") == [f"no such folder: ./runs/rm; {GIVE}, or a Hub id"]
    assert reward_problems("org/reward-model") == []  # a Hub id: checked when it loads


# ---------------------------------------------------------------------------------------------- reward model

PROMPTS = [
    [{"role": "user", "content": "what is the sum of 2 and 3?"}],
    [{"role": "system", "content": "you are a helpful tiny model"}, {"role": "user", "content": "hello"}],
    [{"role": "user", "content": "2+3?"}],
    [{"role": "user", "content": "what is the sum of 2 and 3? please add the numbers"}],
    [{"role": "user", "content": "good day"}],
]
COMPLETIONS = ["5", "hello world", "the answer is 5", "five", "yes good day to you"]


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory):
    """A one-output sequence classifier on the tiny Llama, with a score head large enough to tell texts apart."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    torch.nn.init.normal_(model.score.weight, std=1.0)
    out = tmp_path_factory.mktemp("rm") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def on_cpu(monkeypatch):
    """The scorer loads on the CPU in float32 even where CUDA is present, so float32 references compare to 1e-5."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def one_at_a_time(model, tokenizer, *, max_length: int | None = None) -> list[float]:
    """Each candidate's reward from its own unpadded forward pass: what batching must reproduce."""
    import torch

    from alignkit.methods.rm import reward_text

    model.eval()
    out = []
    for prompt, completion in zip(PROMPTS, COMPLETIONS, strict=True):
        ids = tokenizer(reward_text(tokenizer, [*prompt, {"role": "assistant", "content": completion}]))["input_ids"]
        ids = ids[-max_length:] if max_length else ids
        with torch.no_grad():
            out.append(float(model(torch.tensor([ids])).logits[0, 0]))
    return out


def reference(path, **kwargs) -> list[float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path)
    return one_at_a_time(model, AutoTokenizer.from_pretrained(path), **kwargs)


@pytest.mark.parametrize(("batch_size", "max_length"), [(2, None), (16, None), (3, 6)])
def test_reward_model_scores_batched_as_one_at_a_time(on_cpu, reward_model_dir, batch_size, max_length):
    spec = RewardModelSpec(path=str(reward_model_dir), batch_size=batch_size, max_length=max_length)
    (scorer,) = build_scorers([spec])
    try:
        values = scorer.score(PROMPTS, COMPLETIONS, [{}] * len(PROMPTS))
    finally:
        scorer.close()
    expected = reference(reward_model_dir, max_length=max_length)
    assert len(set(expected)) == len(expected)  # distinct rewards, so a mixed-up order would show
    assert values == pytest.approx(expected, abs=1e-5)


def test_a_reward_model_loads_once_and_is_freed_by_its_last_scorer(on_cpu, reward_model_dir):
    from alignkit.scoring import reward_model

    specs = parse(
        {"reward_model": str(reward_model_dir)}, {"reward_model": {"path": str(reward_model_dir), "batch_size": 1}}
    )
    first, second = build_scorers(specs)
    assert first._loaded is second._loaded and first._loaded.users == 2
    first.close()
    assert second.score(PROMPTS[:1], COMPLETIONS[:1], [{}]) == pytest.approx(reference(reward_model_dir)[:1], abs=1e-5)
    second.close()
    assert reward_model._LOADED == {}
    with pytest.raises(RuntimeError, match="closed"):
        second.score(PROMPTS[:1], COMPLETIONS[:1], [{}])


def test_a_seq_cls_lora_adapter_is_merged_and_scores_as_trained(on_cpu, tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(2)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    torch.nn.init.normal_(base.score.weight, std=1.0)
    lora = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = get_peft_model(base, lora)
    adapted.save_pretrained(tmp_path / "adapter")  # no tokenizer files: the base's tokenizer is used
    expected = one_at_a_time(adapted, AutoTokenizer.from_pretrained(tiny_model_dir))
    (scorer,) = build_scorers(parse({"reward_model": {"path": str(tmp_path / "adapter"), "batch_size": 2}}))
    try:
        assert scorer.score(PROMPTS, COMPLETIONS, [{}] * len(PROMPTS)) == pytest.approx(expected, abs=1e-5)
    finally:
        scorer.close()


@pytest.mark.gpu
def test_reward_model_scores_on_cuda_in_bfloat16(reward_model_dir):
    (scorer,) = build_scorers(parse({"reward_model": {"path": str(reward_model_dir), "batch_size": 2}}))
    try:
        model = scorer._loaded.model
        assert (str(next(model.parameters()).device), str(model.dtype)) == ("cuda:0", "torch.bfloat16")
        values = scorer.score(PROMPTS, COMPLETIONS, [{}] * len(PROMPTS))
    finally:
        scorer.close()
    assert values == pytest.approx(reference(reward_model_dir), abs=0.1)  # bfloat16 keeps about 3 digits


def test_a_causal_lm_is_refused_when_it_would_load(tiny_model_dir):
    with pytest.raises(UserError) as caught:
        build_scorers(parse({"reward_model": str(tiny_model_dir)}))
    assert str(caught.value) == (
        f"{tiny_model_dir}: {tiny_model_dir} is a causal language model (LlamaForCausalLM), not a reward model; {GIVE}"
    )


def test_scoring_specs_import_nothing_heavy():
    import subprocess

    code = (
        "import sys, alignkit.scoring.specs\nprint(sorted({'torch', 'transformers', 'peft', 'trl'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


class _BosTokenizer:
    """A Llama-3-like tokenizer stand-in: its template writes BOS and encoding adds another."""

    bos_token, bos_token_id, eos_token = "<s>", 1, "</s>"

    def apply_chat_template(self, messages, tokenize=False):
        return "<s>" + "".join(f"[{m['role']}] {m['content']}\n" for m in messages)

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [5] * len(text)}


def test_reward_text_drops_the_template_bos_that_encoding_adds_again_as_reward_model_training_did():
    from alignkit.methods.rm import reward_text

    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert reward_text(_BosTokenizer(), messages) == "[user] hi\n[assistant] yo</s>"


# ---------------------------------------------------------------------------------------------- reasoning scorers


def test_reasoning_kinds_label_read_columns_and_dump_to_the_mapping_form():
    specs = parse(
        {"math": "answer", "weight": 2}, {"think_format": True, "weight": 0.5},
        {"overlong": {"max_completion_length": 4096, "buffer": 1024}},
    )  # fmt: skip
    assert labels(specs) == ["math:answer", "think_format", "overlong"]
    assert [set(spec.columns) for spec in specs] == [{"answer"}, set(), set()]
    dumped = Holder(scorers=specs).model_dump(mode="json")["scorers"]
    assert dumped == [
        {"math": {"column": "answer", "weight": 2.0}},
        {"think_format": {"weight": 0.5}},
        {"overlong": {"max_completion_length": 4096, "buffer": 1024, "weight": 1.0}},
    ]
    assert parse(*dumped) == specs


def test_an_overlong_buffer_past_the_maximum_is_located_at_buffer():
    from alignkit.recipe.problems import problems_from_validation

    with pytest.raises(ValidationError) as caught:
        parse({"regex": "a"}, {"overlong": {"max_completion_length": 100, "buffer": 101}})
    (problem,) = problems_from_validation(caught.value, Holder, source="r.yaml", method="sft")
    assert str(problem) == (
        "r.yaml: scorers.1.overlong.buffer: 101 exceeds max_completion_length (100); the penalty starts at"
        " max_completion_length - buffer tokens"
    )


# (completion, reference, value): what TRL's accuracy_reward gives, which the math scorer must give too.
MATH_CASES = [
    (r"\boxed{1/2}", "0.5", 1.0),
    (r"The answer is $\frac{1}{2}$", "1/2", 1.0),
    (r"$\frac{1}{2}$", "1/2", 0.0),  # no \boxed{} and no anchor such as "the answer is": not read
    (r"\boxed{\frac{1}{3}}", r"\frac{1}{3}", 1.0),
    (r"\boxed{3}", "2", 0.0),
    ("5", "5", 0.0),  # a bare number is no LaTeX answer
    (r"\boxed{1,000}", "1000", 1.0),
    (r"\boxed{-7}", "-7.0", 1.0),
    (r"\boxed{50\%}", "0.5", 1.0),
    (r"\boxed{x = 3}", "3", 1.0),
    (r"\boxed{3}", "$3$", 1.0),
    (r"the answer is \boxed{5 \text{ cm}}", "5", 1.0),  # units normalised away
    (r"\boxed{2}", "#### 2", 1.0),
    ("<think>1/2?</think> The final answer is $0.5$", "1/2", 1.0),
    ("", "1", 0.0),
    (r"\boxed{0.5}", "hello", None),  # a reference math-verify cannot parse: no score
    (r"\boxed{x}", "", None),
    (r"\boxed{(1, 2)}", "(1,2)", None),
]


def math_scorer():
    from alignkit.scoring.reasoning import MathScorer

    return MathScorer(MathSpec(column="answer"), "math:answer")


def test_math_scorer_verifies_the_final_answer():
    completions = [completion for completion, _, _ in MATH_CASES]
    rows = [{"answer": reference} for _, reference, _ in MATH_CASES]
    assert math_scorer().score([[]] * len(rows), completions, rows) == [value for _, _, value in MATH_CASES]


def test_math_scorer_equals_trls_accuracy_reward():
    from trl.rewards import accuracy_reward

    completions = [completion for completion, _, _ in MATH_CASES]
    references = [reference for _, reference, _ in MATH_CASES]
    ours = math_scorer().score([[]] * len(references), completions, [{"answer": r} for r in references])
    theirs = accuracy_reward([[{"role": "assistant", "content": c}] for c in completions], references)
    assert ours == theirs


def test_math_scorer_reads_numbers_skips_rows_without_a_reference_and_refuses_a_mapping():
    rows = [{"answer": 0.5}, {"answer": 3}, {"answer": None}, {}]
    assert math_scorer().score([[]] * 4, [r"\boxed{1/2}", r"\boxed{4}", r"\boxed{1}", "x"], rows) == [
        1.0,
        0.0,
        None,
        None,
    ]
    with pytest.raises(UserError) as caught:
        math_scorer().score([[]], [r"\boxed{1}"], [{"answer": {"value": 1}}])
    assert str(caught.value) == (
        "prompt rows: answer: holds dict values; math compares the completion's final answer with one reference, a"
        " string or a number: set column to the one holding it"
    )


def test_math_scorer_runs_off_the_main_thread_without_timeouts():
    import threading

    found = []
    thread = threading.Thread(
        target=lambda: found.append(math_scorer().score([[]], [r"\boxed{1/2}"], [{"answer": "0.5"}]))
    )
    thread.start()
    thread.join()
    assert found == [[1.0]]  # math-verify's signal.alarm() timeouts would raise here; they are off, as in TRL


THINK_CASES = [
    ("<think>\nreasoning\n</think>\nanswer", 1.0),
    ("<think>a</think>", 1.0),
    ("<think></think>", 1.0),
    ("<think>a\n</think>\n\n", 1.0),
    ("<think>\nno close", 0.0),
    ("answer <think>x</think>", 0.0),
    (" <think>a</think>", 0.0),
    ("intro\n<think>a</think>", 0.0),
    ("<think>a</think><think>b</think>", 0.0),
    ("<think>a<think>b</think>", 0.0),
    ("<THINK>a</THINK>", 0.0),
    ("</think>", 0.0),
]


def test_think_format_equals_trls_think_format_reward():
    from trl.rewards import think_format_reward

    from alignkit.scoring.reasoning import ThinkFormatScorer

    texts = [text for text, _ in THINK_CASES]
    ours = ThinkFormatScorer(ThinkFormatSpec(), "think_format").score([[]] * len(texts), texts, [{}] * len(texts))
    assert ours == [value for _, value in THINK_CASES]
    assert ours == think_format_reward([[{"content": text}] for text in texts])


@pytest.mark.parametrize(("max_length", "buffer"), [(100, 20), (4096, 1024), (10, 0), (10, 10), (3, 1)])
def test_overlong_equals_trls_soft_overlong_punishment_at_the_boundaries(max_length, buffer):
    from trl.rewards import get_soft_overlong_punishment

    from alignkit.scoring.reasoning import OverlongScorer

    start = max_length - buffer
    lengths = sorted({0, 1, max(start - 1, 0), start, start + 1, (start + max_length) // 2, max_length - 1, max_length,
                      max_length + 1, 2 * max_length})  # fmt: skip
    scorer = OverlongScorer(OverlongSpec(max_completion_length=max_length, buffer=buffer), "overlong")
    ours = scorer.score([[]] * len(lengths), [""] * len(lengths), [{}] * len(lengths), tokens=lengths)
    assert ours == get_soft_overlong_punishment(max_length, buffer)([[7] * length for length in lengths])
    assert ours[lengths.index(start)] == 0.0
    assert ours[lengths.index(max_length)] == (-1.0 if buffer else 0.0)
    assert ours[lengths.index(max_length + 1)] == -1.0


def test_overlong_values_and_its_refusal_without_token_counts():
    from alignkit.scoring.reasoning import OverlongScorer

    scorer = OverlongScorer(OverlongSpec(max_completion_length=100, buffer=20), "overlong")
    assert scorer.score([[]] * 4, ["a"] * 4, [{}] * 4, tokens=[80, 90, 100, 101]) == [0.0, -0.5, -1.0, -1.0]
    with pytest.raises(RuntimeError, match=r"scorer overlong needs each completion's length in tokens"):
        scorer.score([[]], ["a"], [{}])
    with pytest.raises(ValueError, match="2 token counts for 1 completions"):
        scorer.score([[]], ["a"], [{}], tokens=[1, 2])


def test_the_rule_and_python_scorers_take_and_ignore_token_counts(rewards_module):
    scorers = build_scorers(parse({"regex": "5"}, {"exact_match": "answer"}, {"python": f"{rewards_module}:maybe"}))
    values = [scorer.score([[]] * 3, ["5", "6", "x"], [{"answer": "5"}] * 3, tokens=[1, 2, 3]) for scorer in scorers]
    assert values == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [None, 1.0, 2.0]]


def test_sample_passes_each_candidates_token_count_to_the_scorers():
    from types import SimpleNamespace

    from alignkit.sampling.generation import Completion
    from alignkit.sampling.run import scored_records

    prompt = SimpleNamespace(messages=[{"role": "user", "content": "q"}], row={"answer": "1/2"})
    generated = [
        [Completion(text=r"\boxed{0.5}", tokens=9, finish="eos"), Completion(text="no", tokens=12, finish="length")]
    ]
    scorers = build_scorers(parse({"overlong": {"max_completion_length": 12, "buffer": 4}}, {"math": "answer"}))
    (record,) = scored_records([prompt], generated, scorers, first_id=0)
    assert [c["scores"] for c in record["candidates"]] == [
        {"overlong": -0.25, "math:answer": 1.0},
        {"overlong": -1.0, "math:answer": 0.0},
    ]


def test_check_scorers_finds_a_math_column_the_rows_lack():
    specs = parse({"math": "answer"}, {"think_format": True}, {"math": "solution"})
    problems = check_scorers(specs, {"prompt", "solution"}, where="sample.scorers", source="r.yaml")
    assert [str(problem) for problem in problems] == [
        "r.yaml: sample.scorers.0.math: the prompt rows have no column 'answer' (their columns: prompt, solution);"
        " set column to the one holding the reference answer",
    ]


MISSING = "math needs the math-verify package, which is not installed: pip install 'alignkit[math]'"


def test_math_without_math_verify_is_refused_before_and_when_it_is_built(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # as if not installed: importing it fails
    specs = parse({"math": "answer"}, {"think_format": True})
    problems = check_scorers(specs, {"answer"}, where="sample.scorers", source="r.yaml")
    assert [str(problem) for problem in problems] == [f"r.yaml: sample.scorers.0.math: {MISSING}"]
    with pytest.raises(UserError) as caught:
        build_scorers(specs)
    assert str(caught.value) == f"math:answer: {MISSING}"
    assert caught.value.exit_code == 2


# ---------------------------------------------------------------------------------------------- TRL reward functions


def reward_scorers(rewards_module):
    math, think = {"math": "answer", "weight": 2}, {"think_format": {"weight": 0.5}}
    overlong = {"overlong": {"max_completion_length": 10, "buffer": 4}, "weight": -1}
    return build_scorers(parse(math, think, overlong, {"python": f"{rewards_module}:brevity"}))


COMPLETION_TEXTS = [r"<think>half</think> \boxed{0.5}", r"\boxed{3}", r"<think>x</think>\boxed{1}"]
EXPECTED = {
    "math:answer": [1.0, 0.0, None],
    "think_format": [1.0, 0.0, 1.0],
    "overlong": [0.0, -0.5, -1.0],
    "python:brevity": [-31.0, -9.0, -25.0],
}


def trainer_keywords(logged):
    """What GRPOTrainer passes beside prompts, completions and completion_ids: the dataset's other columns, one
    value per completion, and its own keywords."""
    return {
        "answer": ["1/2", "1/2", "hello"],
        "level": [1, 1, 2],
        "trainer_state": object(),
        "log_extra": lambda *args: logged.append(args),
        "log_metric": lambda *args: logged.append(args),
    }


@pytest.mark.parametrize("conversational", [True, False])
def test_reward_functions_are_called_as_grpo_trainer_calls_them(rewards_module, conversational):
    from alignkit.scoring.trl_rewards import reward_functions, reward_weights

    scorers = reward_scorers(rewards_module)
    functions = reward_functions(scorers)
    assert [function.__name__ for function in functions] == list(EXPECTED)
    assert reward_weights(scorers) == [2.0, 0.5, -1.0, 1.0]
    if conversational:
        prompts = [[{"role": "user", "content": "half?"}]] * 2 + [[{"role": "user", "content": "q"}]]
        completions = [[{"role": "assistant", "content": text}] for text in COMPLETION_TEXTS]
    else:
        prompts, completions = ["half?", "half?", "q"], COMPLETION_TEXTS
    logged = []
    ids = [[5] * 6, [5] * 8, [5] * 11]
    values = {
        function.__name__: function(
            prompts=prompts, completions=completions, completion_ids=ids, **trainer_keywords(logged)
        )
        for function in functions
    }
    assert values == EXPECTED
    (call,) = sys.modules[rewards_module].CALLS  # the python scorer saw the columns, not the trainer's keywords
    assert call == {
        "prompts": [[{"role": "user", "content": "half?"}]] * 2 + [[{"role": "user", "content": "q"}]],
        "completions": [[{"role": "assistant", "content": text}] for text in COMPLETION_TEXTS],
        "answer": ["1/2", "1/2", "hello"],
        "level": [1, 1, 2],
    }
    assert logged == []


def test_grpo_trainers_own_reward_step_takes_the_functions(rewards_module):
    """TRL's GRPOTrainer._calculate_rewards (private; TRL is pinned to 1.16) on a stand-in trainer: the call, the
    names it logs under, and None read as NaN."""
    from types import SimpleNamespace

    import torch
    from trl import GRPOTrainer
    from trl.trainer.utils import get_callable_name

    from alignkit.scoring.trl_rewards import reward_functions

    functions = reward_functions(reward_scorers(rewards_module))
    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(device="cpu", is_main_process=True),
        state=SimpleNamespace(global_step=0),
        args=SimpleNamespace(report_to=[]),
        _log_completion_extra=lambda *args: None,
        _log_metric=lambda *args: None,
        environments=None,
        reward_funcs=functions,
        reward_processing_classes=[None] * len(functions),
        reward_func_names=[get_callable_name(function) for function in functions],
    )
    prompts = [[{"role": "user", "content": "half?"}]] * 2 + [[{"role": "user", "content": "q"}]]
    columns = zip(prompts, ["1/2", "1/2", "hello"], [1, 1, 2], strict=True)
    inputs = [{"prompt": prompt, "answer": answer, "level": level} for prompt, answer, level in columns]
    completions = [[{"role": "assistant", "content": text}] for text in COMPLETION_TEXTS]
    ids = [[5] * 6, [5] * 8, [5] * 11]
    rewards = GRPOTrainer._calculate_rewards(trainer, inputs, prompts, completions, ids)
    assert trainer.reward_func_names == list(EXPECTED)
    expected = torch.tensor([[float("nan") if v is None else v for v in values] for values in EXPECTED.values()]).T
    assert torch.allclose(rewards, expected, equal_nan=True)


def test_completion_text_and_prompt_messages():
    from alignkit.scoring.trl_rewards import completion_text, prompt_messages

    assert prompt_messages("hi") == [{"role": "user", "content": "hi"}]
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert prompt_messages(messages) == messages
    assert completion_text("plain") == "plain"
    assert (
        completion_text([{"content": "no role, as TRL's examples write it"}]) == "no role, as TRL's examples write it"
    )
    tool_use = [
        {"role": "assistant", "content": None, "tool_calls": [{"name": "add"}]},
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": [{"type": "text", "text": "so "}, {"type": "text", "text": r"\boxed{5}"}]},
    ]
    assert completion_text(tool_use) == r"so \boxed{5}"


def test_reward_functions_pickle_with_their_scorers():
    import pickle

    from alignkit.scoring.trl_rewards import reward_functions

    (function,) = reward_functions(build_scorers(parse({"regex": r"\d"})))
    copy = pickle.loads(pickle.dumps(function))
    assert copy.__name__ == "regex"
    assert copy(prompts=["a", "b"], completions=["1", "x"], completion_ids=[[1], [2]]) == [1.0, 0.0]
