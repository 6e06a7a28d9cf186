"""Mixture arithmetic with exact counts: fractions, oversampling, test sets, re-splits, both handbook forms."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from alignkit.data import mixture
from alignkit.data.prepare import prepare_data
from alignkit.data.templates import ensure_chat_template
from alignkit.demo.tiny import build_tokenizer
from alignkit.errors import UserError
from alignkit.methods import METHODS
from alignkit.recipe.resolve import resolve_recipe


def chat(tag: str, number: int) -> dict:
    return {
        "messages": [{"role": "user", "content": f"{tag} {number}"}, {"role": "assistant", "content": "yes"}],
        "id": f"{tag}-{number}",
    }


def save_dict(tmp_path, name: str, tag: str, splits: dict[str, int]):
    """A save_to_disk DatasetDict whose rows say which source and row they are ('cats 7')."""
    from datasets import Dataset, DatasetDict

    folder = tmp_path / name
    DatasetDict(
        {split: Dataset.from_list([chat(tag, i) for i in range(rows)]) for split, rows in splits.items()}
    ).save_to_disk(str(folder))
    return folder


def rows_of(prepared_split, tokenizer) -> list[tuple[str, int]]:
    out = []
    for row in prepared_split:
        match = re.search(r"user\n(\w+) (\d+)", tokenizer.decode(row["input_ids"]))
        out.append((match.group(1), int(match.group(2))))
    return out


def prepare(datasets, method="sft", **data):
    recipe = METHODS[method].recipe.model_validate(
        {"model": {"name_or_path": "tiny"}, "data": {"datasets": datasets, **data}}
    )
    return _prepare(recipe, method)


def _prepare(recipe, method="sft"):
    tokenizer = build_tokenizer()
    ensure_chat_template(tokenizer, recipe)
    return prepare_data(recipe, tokenizer), tokenizer


@pytest.mark.parametrize(
    ("rows", "weight", "expected"),
    [(10, 0.5, 5), (10, 0.3, 3), (10, 0.7, 7), (7, 1.0, 7), (10, 2.5, 25), (3, 1.34, 4), (10, 0.0, 0), (9, 0.05, 0)],
)
def test_rows_for_weight_is_floor_of_weight_times_rows(rows, weight, expected):
    assert mixture.rows_for_weight(rows, weight) == expected
    assert len(mixture.weighted_indices(rows, weight, seed=0)) == expected


def test_oversampling_is_whole_copies_plus_a_seeded_remainder():
    indices = mixture.weighted_indices(10, 2.5, seed=7)
    counts = Counter(indices)
    assert sorted(counts) == list(range(10))
    assert sorted(Counter(counts.values()).items()) == [(2, 5), (3, 5)]
    assert indices == mixture.weighted_indices(10, 2.5, seed=7)


def test_fractions_pick_random_rows_not_the_first_ones_and_the_seed_decides():
    first = mixture.weighted_indices(100, 0.1, seed=0)
    assert len(set(first)) == 10
    assert first != list(range(10))
    assert first == mixture.weighted_indices(100, 0.1, seed=0)
    assert first != mixture.weighted_indices(100, 0.1, seed=1)


def test_weights_fractions_and_oversampling_across_sources(tmp_path):
    a = save_dict(tmp_path, "a", "cats", {"train": 20})
    b = save_dict(tmp_path, "b", "dogs", {"train": 4})
    prepared, tokenizer = prepare([{"path": str(a), "weight": 0.25}, {"path": str(b), "weight": 1.5}])
    got = Counter(tag for tag, _ in rows_of(prepared.train, tokenizer))
    assert got == {"cats": 5, "dogs": 6}
    assert [(s.rows_in, s.rows_out, s.train_rows, s.test_rows) for s in prepared.report.sources] == [
        (20, 5, 5, 0),
        (4, 6, 6, 0),
    ]
    assert (prepared.report.train_rows, prepared.report.test_rows, prepared.test) == (11, 0, None)
    # the 1.5 source: every row once, two of them twice
    dogs = Counter(n for tag, n in rows_of(prepared.train, tokenizer) if tag == "dogs")
    assert sorted(dogs.values()) == [1, 1, 2, 2]


def test_test_sources_are_used_whole_unless_weighted(tmp_path):
    a = save_dict(tmp_path, "a", "cats", {"train": 10, "test": 6})
    prepared, tokenizer = prepare(
        [{"path": str(a), "split": "train", "weight": 0.5}, {"path": str(a), "split": "test"}]
    )
    assert (len(prepared.train), len(prepared.test)) == (5, 6)
    assert sorted(n for _, n in rows_of(prepared.test, tokenizer)) == [0, 1, 2, 3, 4, 5]
    weighted, _ = prepare([{"path": str(a), "split": "train"}, {"path": str(a), "split": "test", "weight": 0.5}])
    assert (len(weighted.train), len(weighted.test)) == (10, 3)


def test_role_both_feeds_train_and_test(tmp_path):
    a = save_dict(tmp_path, "a", "cats", {"train": 8})
    prepared, _ = prepare([{"path": str(a), "role": "both", "weight": 0.5}])
    assert (len(prepared.train), len(prepared.test)) == (4, 4)


@pytest.mark.parametrize(("size", "train", "test"), [(3, 17, 3), (0.25, 15, 5), (0.11, 17, 3)])
def test_test_split_size_resplits_the_pool(tmp_path, size, train, test):
    a = save_dict(tmp_path, "a", "cats", {"train": 12})
    b = save_dict(tmp_path, "b", "dogs", {"train": 8})
    prepared, tokenizer = prepare([{"path": str(a)}, {"path": str(b)}], test_split_size=size)
    assert (len(prepared.train), len(prepared.test)) == (train, test)
    pooled = rows_of(prepared.train, tokenizer) + rows_of(prepared.test, tokenizer)
    assert len(set(pooled)) == 20  # a partition: no row in both, none lost
    sources = prepared.report.sources
    assert sum(s.train_rows for s in sources) == train
    assert sum(s.test_rows for s in sources) == test
    assert [s.train_rows + s.test_rows for s in sources] == [12, 8]


def test_test_split_size_is_ignored_when_a_source_is_the_test_set(tmp_path):
    a = save_dict(tmp_path, "a", "cats", {"train": 10, "test": 2})
    prepared, _ = prepare([{"path": str(a)}, {"path": str(a), "split": "test"}], test_split_size=5)
    assert (len(prepared.train), len(prepared.test)) == (10, 2)
    assert "test_split_size is ignored: the sources with role test (or both) are the test set" in prepared.notices


def test_a_split_that_leaves_nothing_to_train_on_is_refused(tmp_path):
    a = save_dict(tmp_path, "a", "cats", {"train": 4})
    with pytest.raises(UserError) as err:
        prepare([{"path": str(a)}], test_split_size=4)
    assert str(err.value) == (
        "recipe: data.test_split_size: 4 of 4 pooled rows gives 4 test rows, leaving 0 to train on; use a smaller"
        " fraction or count"
    )


def test_no_training_rows_after_weighting_is_an_error(tmp_path):
    a = save_dict(tmp_path, "a", "cats", {"train": 4})
    with pytest.raises(UserError) as err:
        prepare([{"path": str(a), "weight": 0.1}])
    assert str(err.value) == (
        f"recipe: data.datasets: no train rows left after weighting, decontamination and dropping ({a} [train]: 4"
        " found, weight 0.1, 0 decontaminated, 0 dropped); check the weights, splits and roles"
    )


def test_same_recipe_same_rows_other_seed_other_rows(tmp_path):
    a = save_dict(tmp_path, "a", "cats", {"train": 30})
    one, tokenizer = prepare([{"path": str(a), "weight": 0.2}], seed=5)
    again, _ = prepare([{"path": str(a), "weight": 0.2}], seed=5)
    other, _ = prepare([{"path": str(a), "weight": 0.2}], seed=6)
    assert rows_of(one.train, tokenizer) == rows_of(again.train, tokenizer)
    assert sorted(rows_of(one.train, tokenizer)) != sorted(rows_of(other.train, tokenizer))


def test_old_handbook_mixer_fractions_of_train_splits_and_whole_test_splits(tmp_path, write_recipe):
    a = save_dict(tmp_path, "ultrachat", "cats", {"train_sft": 40, "test_sft": 6})
    b = save_dict(tmp_path, "capybara", "dogs", {"train_sft": 10, "test_sft": 3})
    path = write_recipe(
        f"""\
model_name_or_path: tiny
dataset_mixer:
  {a}: 0.25
  {b}: 1.0
dataset_splits:
- train_sft
- test_sft
max_seq_length: 64
output_dir: {tmp_path / "out"}
"""
    )
    resolved = resolve_recipe("sft", str(path))
    prepared, tokenizer = _prepare(resolved.recipe)
    assert Counter(t for t, _ in rows_of(prepared.train, tokenizer)) == {"cats": 10, "dogs": 10}
    assert Counter(t for t, _ in rows_of(prepared.test, tokenizer)) == {"cats": 6, "dogs": 3}
    assert [(s.split, s.role, s.weight, s.rows_out) for s in prepared.report.sources] == [
        ("train_sft", "train", 0.25, 10),
        ("test_sft", "test", 1.0, 6),
        ("train_sft", "train", 1.0, 10),
        ("test_sft", "test", 1.0, 3),
    ]
    assert not (tmp_path / "out").exists()


def test_new_handbook_mixture_pools_weighted_sources_then_resplits(tmp_path, write_recipe):
    a = save_dict(tmp_path, "ultrachat", "cats", {"train_sft": 40, "test_sft": 6})
    b = save_dict(tmp_path, "capybara", "dogs", {"train_sft": 10})
    path = write_recipe(
        f"""\
model_name_or_path: tiny
dataset_mixture:
  datasets:
  - id: {a}
    split: train_sft
    weight: 0.5
  - id: {a}
    split: test_sft
  - id: {b}
    split: train_sft
    weight: 2.0
  seed: 3
  test_split_size: 0.1
max_seq_length: 64
output_dir: {tmp_path / "out"}
"""
    )
    resolved = resolve_recipe("sft", str(path))
    prepared, tokenizer = _prepare(resolved.recipe)
    # pool: 20 (half of 40) + 6 (the test split is pooled too) + 20 (two copies of 10) = 46; test = ceil(4.6) = 5
    assert (len(prepared.train), len(prepared.test)) == (41, 5)
    everything = rows_of(prepared.train, tokenizer) + rows_of(prepared.test, tokenizer)
    assert Counter(t for t, _ in everything) == {"cats": 26, "dogs": 20}
    assert [s.train_rows + s.test_rows for s in prepared.report.sources] == [20, 6, 20]


def test_a_single_source_keeps_its_order_so_the_trainer_draws_the_batches_plain_trl_would(tmp_path):
    """The trainer's sampler shuffles the rows with training.seed; shuffling them here too would make the same
    seed draw other batches than a TRL script over the same file."""
    a = save_dict(tmp_path, "a", "cats", {"train": 20})
    prepared, tokenizer = prepare([{"path": str(a)}])
    assert rows_of(prepared.train, tokenizer) == [("cats", i) for i in range(20)]
    # A re-split still tests on random rows; the training rows keep the file's order.
    split, _ = prepare([{"path": str(a)}], test_split_size=5)
    trained = [n for _, n in rows_of(split.train, tokenizer)]
    tested = sorted(n for _, n in rows_of(split.test, tokenizer))
    assert trained == sorted(set(range(20)) - set(tested)) and tested != list(range(15, 20))
    # A test source beside it leaves the training source's order alone as well.
    both = save_dict(tmp_path, "b", "dogs", {"train": 6, "test": 3})
    with_test, _ = prepare([{"path": str(both)}, {"path": str(both), "split": "test"}])
    assert rows_of(with_test.train, tokenizer) == [("dogs", i) for i in range(6)]


def test_several_sources_are_shuffled_together(tmp_path):
    a = save_dict(tmp_path, "a", "cats", {"train": 12})
    b = save_dict(tmp_path, "b", "dogs", {"train": 8})
    prepared, tokenizer = prepare([{"path": str(a)}, {"path": str(b)}])
    tags = [tag for tag, _ in rows_of(prepared.train, tokenizer)]
    assert sorted(tags) == ["cats"] * 12 + ["dogs"] * 8
    assert tags != sorted(tags)  # interleaved, not one source after the other
    again, _ = prepare([{"path": str(a)}, {"path": str(b)}])
    assert rows_of(again.train, tokenizer) == rows_of(prepared.train, tokenizer)
