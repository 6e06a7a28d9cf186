"""KTO: the unpaired format, preference pairs split in two, the batch-size refusal, the desirable:undesirable
ratio notice, dry runs and flat `trl kto` configs, and training the tiny model on pairs."""

from __future__ import annotations

import itertools
import json

import pytest
from test_data_formats import HEAD, Q, prepare, write_rows

from alignkit.data import formats
from alignkit.data.prepare import prepare_data
from alignkit.demo.tiny import build_tokenizer
from alignkit.errors import UserError
from alignkit.methods import METHODS

FIVE = [{"role": "assistant", "content": "5"}]
SIX = [{"role": "assistant", "content": "6"}]


def _rows(prepared) -> list[tuple]:
    return sorted((r["prompt"], r["completion"], r["label"]) for r in prepared.train)


def test_detection_reads_the_label_for_kto_and_leaves_prompt_completion_to_sft():
    row = {"prompt": "a", "completion": "b", "label": True}
    unpaired = formats.Detected(formats.UNPAIRED, ("prompt", "completion", "label"))
    assert formats.detect(list(row), row, METHODS["kto"]) == unpaired
    assert unpaired.shape == "unpaired"
    assert formats.detect(list(row), row, METHODS["sft"]).format == formats.PROMPT_COMPLETION
    pair = {"prompt": "a", "chosen": "b", "rejected": "c"}
    assert formats.detect(list(pair), pair, METHODS["kto"]).format == formats.PREFERENCE


def test_unpaired_rows_are_named_and_rendered_for_the_trainer(tmp_path):
    rows = [
        {"prompt": Q, "completion": FIVE, "label": True},
        {"prompt": Q, "completion": "6", "label": "false"},  # a string completion becomes the assistant turn
        {"prompt": Q, "completion": FIVE, "label": 1},
    ]
    prepared, _ = prepare(tmp_path, rows, method="kto")
    assert prepared.report.sources[0].format == "unpaired"
    assert prepared.train.column_names == ["prompt", "completion", "label"]
    assert _rows(prepared) == [(HEAD, "5<|im_end|>", True), (HEAD, "5<|im_end|>", True), (HEAD, "6<|im_end|>", False)]
    assert (prepared.report.desirable_rows, prepared.report.undesirable_rows) == (2, 1)


def test_plain_text_unpaired_rows_are_used_as_given(tmp_path):
    rows = [{"prompt": "Human: hi Assistant:", "completion": " yes", "label": False}]
    prepared, _ = prepare(tmp_path, rows, method="kto")
    assert prepared.train[0] == {"prompt": "Human: hi Assistant:", "completion": " yes", "label": False}


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "what is 2 plus 3?", "chosen": FIVE, "rejected": SIX},
        {"prompt": Q, "chosen": "5", "rejected": "6"},
        {"prompt": Q, "chosen": FIVE, "rejected": SIX},
        {"chosen": [*Q, *FIVE], "rejected": [*Q, *SIX]},
    ],
    ids=["string-prompt", "string-responses", "message-lists", "implicit-prompt"],
)
def test_a_preference_pair_becomes_a_desirable_and_an_undesirable_row(tmp_path, row):
    prepared, _ = prepare(tmp_path, [row], method="kto")
    assert _rows(prepared) == [(HEAD, "5<|im_end|>", True), (HEAD, "6<|im_end|>", False)]
    source = prepared.report.sources[0]
    assert (source.rows_in, source.train_rows, prepared.report.train_rows) == (1, 2, 2)
    assert "1 preference pair split into 2 unpaired rows" in prepared.report.notices[0]


def test_plain_text_pairs_split_as_given(tmp_path):
    row = {"chosen": "Human: hello Assistant: yes good", "rejected": "Human: hello Assistant: no"}
    prepared, _ = prepare(tmp_path, [row], method="kto")
    assert _rows(prepared) == [
        ("Human: hello Assistant: ", "no", False),
        ("Human: hello Assistant: ", "yes good", True),
    ]


def test_identical_pairs_are_dropped_whole(tmp_path):
    rows = [{"prompt": "a", "chosen": "x", "rejected": "x"}, {"prompt": "a", "chosen": "x", "rejected": "y"}]
    prepared, _ = prepare(tmp_path, rows, method="kto")
    assert _rows(prepared) == [("a", "x", True), ("a", "y", False)]
    assert prepared.report.sources[0].dropped == 1


def test_both_halves_of_a_pair_stay_on_one_side_of_the_split_and_are_shuffled_apart(tmp_path):
    rows = [{"prompt": f"question {n}", "chosen": f" yes {n}", "rejected": f" no {n}"} for n in range(20)]
    prepared, _ = prepare(tmp_path, rows, method="kto", test_split_size=5)
    train, test = list(prepared.train), list(prepared.test)
    assert (len(train), len(test)) == (30, 10)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert sum(r["label"] for r in train) == 15
    # In file order each chosen row would follow its rejected twin; the KL estimate needs other prompts.
    neighbours = sum(a["prompt"] == b["prompt"] for a, b in itertools.pairwise(train))
    assert neighbours < 10


def test_prompts_are_cut_from_the_left(tmp_path):
    row = {"prompt": "one two three four five six", "completion": " yes", "label": True}
    prepared, _ = prepare(tmp_path, [row], method="kto", section={"max_prompt_length": 3, "max_length": 64})
    assert prepared.train[0]["prompt"] == "five six"  # the tokenizer's BOS, which the trainer adds, counts
    assert prepared.report.prompt_truncated == 1


def test_a_bad_label_names_the_row_and_the_field(tmp_path):
    rows = [{"prompt": "a", "completion": "b", "label": True}, {"prompt": "a", "completion": "b", "label": "maybe"}]
    with pytest.raises(UserError, match=r"row 2: label must be true \(desirable\) or false \(undesirable\)"):
        prepare(tmp_path, rows, method="kto")


def test_other_methods_refuse_unpaired_data_and_name_kto(tmp_path):
    with pytest.raises(UserError) as err:
        prepare(tmp_path, [{"prompt": "a", "completion": "b", "label": True}], method="dpo")
    assert "columns found: prompt, completion, label;" in str(err.value)
    assert str(err.value).endswith("this is unpaired data: train it with kto, or give chosen and rejected columns")


def test_the_ratio_notice_says_which_weight_to_change_and_follows_the_weights_past_the_cache(tmp_path):
    path = write_rows(tmp_path, [{"prompt": f"q{n}", "completion": f" a{n}", "label": n < 6} for n in range(8)])

    def notices(**weights):
        recipe = METHODS["kto"].recipe.model_validate(
            {"model": {"name_or_path": "tiny"}, "data": {"datasets": [{"path": str(path)}]}, "kto": weights}
        )
        report = prepare_data(recipe, build_tokenizer()).report
        return report.cached, report.notices

    assert notices() == (
        False,
        [
            "the weighted ratio of desirable to undesirable rows, desirable_weight 1 x 6 : undesirable_weight 1 x 2,"
            " is 3:1, outside the 1:1 to 4:3 KTO asks for; set kto.undesirable_weight to 2.62 (anything from 2.25"
            " to 3), or else kto.desirable_weight to 0.389 (anything from 0.333 to 0.444)"
        ],
    )
    # The weights are not part of the cache key: the cached data comes back, and the notice follows the weights.
    assert notices(undesirable_weight=2.62) == (True, [])
    cached, (light,) = notices(desirable_weight=0.1)
    assert cached and light.startswith(
        "the weighted ratio of desirable to undesirable rows, desirable_weight 0.1 x 6 : undesirable_weight 1 x 2,"
        " is 0.3:1, outside the 1:1 to 4:3 KTO asks for; set kto.desirable_weight to 0.389"
    )


def test_a_per_device_batch_of_one_is_refused(cli):
    result = cli("kto", "--recipe", "pref-align-scan", "--dry-run", "--set", "training.per_device_train_batch_size=1")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: --set training.per_device_train_batch_size=1: training.per_device_train_batch_size: is 1, but KTO"
        " estimates its KL reference point from the other rows of each device's batch; set it to 2 or more"
    )
    # APO-zero (unpaired) has no KL term and takes any batch.
    sets = ("--set", "training.per_device_train_batch_size=1", "--set", "kto.loss_type=apo_zero_unpaired")
    assert cli("kto", "--recipe", "pref-align-scan", "--dry-run", *sets).exit_code == 0


def test_dry_run_json(cli):
    result = cli("kto", "--recipe", "pref-align-scan", "--qlora", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["method"] == "kto"
    section = document["recipe"]["kto"]
    assert (section["beta"], section["loss_type"], section["desirable_weight"]) == (0.01, "kto", 1.0)
    training = document["recipe"]["training"]
    assert (training["learning_rate"], training["per_device_train_batch_size"]) == (5e-6, 4)


FLAT_KTO = """\
model_name_or_path: trl-lib/Qwen2-0.5B-Instruct
dataset_name: trl-lib/kto-mix-14k
learning_rate: 5.0e-7
per_device_train_batch_size: 4
beta: 0.2
loss_type: kto
desirable_weight: 1.33
undesirable_weight: 1.0
max_length: 512
max_prompt_length: 256
output_dir: Qwen2-0.5B-KTO
"""


def test_a_flat_trl_kto_config_converts(cli, write_recipe):
    path = write_recipe(FLAT_KTO, "kto_config.yaml")
    result = cli("kto", "--recipe", path, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    recipe = json.loads(result.stdout)["recipe"]
    assert recipe["kto"] == {
        "beta": 0.2,
        "loss_type": "kto",
        "desirable_weight": 1.33,
        "undesirable_weight": 1.0,
        "max_length": 512,
        "max_prompt_length": 256,
        "precompute_ref_log_probs": None,
    }
    assert recipe["data"]["datasets"][0]["path"] == "trl-lib/kto-mix-14k"
    refused = cli("dpo", "--recipe", path, "--dry-run")
    assert refused.exit_code == 2
    assert "desirable_weight: a kto setting in a dpo config; run `alignkit kto --recipe" in refused.stderr


@pytest.mark.slow
def test_kto_previews_and_trains_on_preference_pairs_split_in_two(cli, tiny_model_dir, tmp_path):
    from test_train import CHAT, _assert_finished_run, _jsonl, write_recipe
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "pairs"
    folder.mkdir()
    # Named as the unpaired rows write_recipe gives kto, but holding preference pairs.
    _jsonl(
        folder / "kto.jsonl",
        [{"prompt": [{"role": "user", "content": q}], "chosen": a, "rejected": "no bad wrong"} for q, a in CHAT],
    )
    out = tmp_path / "kto-pairs"
    recipe = write_recipe(tmp_path, "kto", tiny_model_dir, folder, out, kto={"desirable_weight": 2.0})

    preview = cli("data", "kto", "--recipe", recipe, "--json", "--show", "2")
    assert preview.exit_code == 0, preview.output
    document = json.loads(preview.stdout)
    assert (document["train_rows"], document["desirable_rows"], document["undesirable_rows"]) == (16, 8, 8)
    assert {e["label"] for e in document["examples"]} <= {True, False}
    assert all(
        e["trained"] == [e["completion"]] and e["completion"].endswith("<|im_end|>") for e in document["examples"]
    )
    text = cli("data", "kto", "--recipe", recipe, "--show", "4").stdout
    assert "--- desirable ---" in text or "--- undesirable ---" in text

    result = cli("kto", "--recipe", recipe)
    assert result.exit_code == 0, result.output
    # The worker prints the data summary and its notes before it trains (on stdout; progress goes to stderr).
    assert "kto data: 16 train rows, 0 test rows" in result.stdout.splitlines()
    assert "note: 8 preference pairs split into 16 unpaired rows" in result.stdout
    assert (
        "note: the weighted ratio of desirable to undesirable rows, desirable_weight 2 x 8 : undesirable_weight 1 x 8,"
        " is 2:1, outside the 1:1 to 4:3 KTO asks for; set kto.undesirable_weight to 1.75 (anything from 1.5 to 2)"
    ) in result.stdout
    _assert_finished_run(out, "kto")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [row for row in history if "loss" in row]
    # KTOTrainer logs the KL estimate every step, a kind's reward only when the batch held that kind.
    assert all("kl" in row for row in steps)
    assert any("rewards/chosen" in row for row in steps) and any("rewards/rejected" in row for row in steps)
    assert "| desirable / undesirable weight | 2 / 1 |" in (out / "README.md").read_text()
    assert AutoModelForCausalLM.from_pretrained(out).config.use_cache is True
