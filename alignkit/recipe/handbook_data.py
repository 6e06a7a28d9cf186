"""The data keys of flat handbook/TRL configs, converted into `data.datasets` with the handbook's semantics.

The old form (`dataset_mixer` fractions with `dataset_splits`, routed by split name: train splits weighted,
test splits whole), the new form (`dataset_mixture`: every entry pooled, re-split by `test_split_size`), and
TRL's single `dataset_name`. Used by `alignkit.recipe.handbook`; every renaming gets a notice there.
"""

from __future__ import annotations

from typing import Any

from alignkit.errors import Problem

DATA_KEYS = {"dataset_mixer", "dataset_splits", "dataset_configs", "dataset_mixture"}
DATA_KEYS |= {"dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split"}


_SOURCES = {
    "dataset_mixture": "the current handbook's form",
    "dataset_mixer": "the old handbook's form",
    "dataset_name": "TRL's single dataset",
}
"""The keys that each give the whole of the data, the one to keep first."""


def convert_data(data: dict, source: str, put, out, problems: list[Problem]) -> None:
    """Turn the flat config's data keys into `data.datasets` (and seed, test_split_size) through `put`."""
    given = [key for key in _SOURCES if key in data]
    for extra in given[1:]:
        # Reading one would silently drop the other; the user says which one they meant.
        problems.append(
            Problem(
                source=source,
                path=extra,
                message=f"gives the data, as {given[0]} does; keep {given[0]} ({_SOURCES[given[0]]}) and remove"
                f" {extra} ({_SOURCES[extra]})",
            )
        )
    if "dataset_mixture" in data:
        _convert_mixture(data, source, put, out, problems)
    elif "dataset_mixer" in data:
        _convert_mixer(data, source, put, out, problems)
    elif "dataset_name" in data:
        _convert_named(data, source, put, out)
    else:
        problems.append(
            Problem(
                source=source,
                path="dataset_mixture",
                message="no data: give dataset_mixture, dataset_mixer with dataset_splits, or dataset_name",
            )
        )
    stray = {"dataset_splits", "dataset_configs"} & data.keys()
    if stray and "dataset_mixer" not in data:
        for key in sorted(stray):
            out.notices.append(f"dropped {key} (only read with dataset_mixer)")


def _convert_mixture(data: dict, source: str, put, out, problems: list[Problem]) -> None:
    mixture = data["dataset_mixture"]
    if not isinstance(mixture, dict) or not isinstance(mixture.get("datasets"), list):
        problems.append(
            Problem(source=source, path="dataset_mixture", message="must be a mapping with a datasets list")
        )
        return
    unknown = set(mixture) - {"datasets", "seed", "test_split_size"}
    for key in sorted(unknown):
        problems.append(
            Problem(
                source=source, path=f"dataset_mixture.{key}", message="unknown key (datasets, seed, test_split_size)"
            )
        )
    sources = []
    for index, entry in enumerate(mixture["datasets"]):
        if not isinstance(entry, dict) or "id" not in entry:
            problems.append(Problem(source=source, path=f"dataset_mixture.datasets.{index}", message="needs an id"))
            continue
        extra = set(entry) - {"id", "config", "split", "columns", "weight"}
        for key in sorted(extra):
            problems.append(
                Problem(
                    source=source,
                    path=f"dataset_mixture.datasets.{index}.{key}",
                    message="unknown key (id, config, split, columns, weight)",
                )
            )
        weight = entry.get("weight")
        # The new handbook pools every entry, test splits included, and re-splits by test_split_size.
        sources.append(
            _drop_none(
                {
                    "path": entry["id"],
                    "name": entry.get("config"),
                    "split": entry.get("split", "train"),
                    "columns": entry.get("columns"),
                    "weight": 1.0 if weight is None else weight,
                    "role": "train",
                }
            )
        )
    put("data.datasets", sources, "dataset_mixture")
    if mixture.get("test_split_size") is not None:
        put("data.test_split_size", mixture["test_split_size"], "dataset_mixture")
    put("data.seed", mixture.get("seed", 0), "dataset_mixture")
    out.notices.append(
        f"dataset_mixture -> data.datasets ({len(sources)} sources pooled"
        + (f", re-split with test_split_size {mixture['test_split_size']})" if mixture.get("test_split_size") else ")")
    )


def _convert_mixer(data: dict, source: str, put, out, problems: list[Problem]) -> None:
    mixer = data["dataset_mixer"]
    splits = data.get("dataset_splits", ["train", "test"])
    configs = data.get("dataset_configs")
    if not isinstance(mixer, dict) or not mixer:
        problems.append(Problem(source=source, path="dataset_mixer", message="must map dataset ids to fractions"))
        return
    if isinstance(splits, str):
        splits = [splits]
    if not isinstance(splits, list) or not splits or not all(isinstance(split, str) for split in splits):
        problems.append(
            Problem(source=source, path="dataset_splits", message=f"must be a list of split names, got {splits!r}")
        )
        return
    if configs is not None and (not isinstance(configs, list) or len(configs) != len(mixer)):
        problems.append(
            Problem(
                source=source,
                path="dataset_configs",
                message=f"needs one entry per dataset_mixer entry ({len(mixer)}), got {configs!r}",
            )
        )
        return
    sources = []
    for index, (dataset_id, fraction) in enumerate(mixer.items()):
        if not isinstance(fraction, int | float) or isinstance(fraction, bool) or fraction < 0:
            problems.append(
                Problem(
                    source=source,
                    path=f"dataset_mixer.{dataset_id}",
                    message=f"fraction must be a number >= 0 (given: {fraction!r})",
                )
            )
            continue
        for split in splits:
            if "train" in split:
                role, weight = "train", fraction
            elif "test" in split:
                role, weight = "test", 1.0  # the old handbook used test splits whole
            else:
                problems.append(
                    Problem(
                        source=source,
                        path="dataset_splits",
                        message=f"split {split!r} names neither train nor test; the handbook routes splits by name",
                    )
                )
                return
            sources.append(
                _drop_none(
                    {
                        "path": dataset_id,
                        "name": configs[index] if configs else None,
                        "split": split,
                        "weight": weight,
                        "role": role,
                    }
                )
            )
    put("data.datasets", sources, "dataset_mixer")
    put("data.seed", 42, "dataset_mixer")
    out.notices.append(
        f"dataset_mixer + dataset_splits -> data.datasets ({len(sources)} sources; fractions of train"
        " splits, test splits whole)"
    )


def _convert_named(data: dict, source: str, put, out) -> None:
    name = data["dataset_name"]
    config = data.get("dataset_config")
    # An explicit null is the default split, as TRL reads it.
    train_split = _or_default(data.get("dataset_train_split"), "train")
    sources = [_drop_none({"path": name, "name": config, "split": train_split, "role": "train"})]
    evaluates = data.get("eval_strategy", data.get("evaluation_strategy", "no")) != "no"
    if evaluates:
        test_split = _or_default(data.get("dataset_test_split"), "test")
        sources.append(_drop_none({"path": name, "name": config, "split": test_split, "role": "test"}))
    put("data.datasets", sources, "dataset_name")
    out.notices.append(f"dataset_name -> data.datasets ({', '.join(str(s['split']) for s in sources)})")


def _or_default(value: Any, default: str) -> Any:
    return default if value is None else value


def _drop_none(mapping: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}
