"""Loading one mixture source: a Hub dataset, a local data file or folder, or a `save_to_disk` folder.

Local paths are tried first; anything else is a Hub id loaded through `datasets.load_dataset` (the same
code path a user with Hub access takes). The handbook's fallback layout, a `save_to_disk` Dataset in
`<path>/<split>`, is understood too. A malformed file is refused naming the file and the line.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from alignkit.errors import Problem, UserError

BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".arrow": "arrow",
    ".txt": "text",
}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
_SPLIT_RE = re.compile(r"^([^\[\]]+)(\[.*\])?$")


def split_name(split: str) -> str:
    """The split's name without its slice (`train[:10%]` -> `train`)."""
    match = _SPLIT_RE.match(split.strip())
    return match.group(1).strip() if match else split


def problem(source, index: int, message: str) -> UserError:
    """A UserError naming the source by its path and its place in the recipe."""
    return UserError(Problem(source=source.path, path=f"data.datasets.{index}", message=message))


def data_file_builder(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in _COMPRESSED:
        suffix = Path(path.stem).suffix.lower()
    return BUILDERS.get(suffix)


def local_kind(path: Path) -> str | None:
    """file, dict (save_to_disk DatasetDict), dataset (save_to_disk Dataset), split-folders, folder, or None."""
    if path.is_file():
        return "file"
    if not path.is_dir():
        return None
    if (path / "dataset_dict.json").is_file():
        return "dict"
    if (path / "state.json").is_file():
        return "dataset"
    if any((child / "state.json").is_file() for child in path.iterdir() if child.is_dir()):
        return "split-folders"
    return "folder"


def looks_local(path: str) -> bool:
    """Whether a missing path was meant as a local one (so the message says file-not-found, not Hub)."""
    return path.startswith(("/", "./", "../", "~")) or data_file_builder(Path(path)) is not None


def signature(source) -> dict[str, Any] | None:
    """A cheap content signature of a local source (paths, sizes, modification times); None for Hub ids."""
    return path_signature(source.path)


def path_signature(name: str) -> dict[str, Any] | None:
    """Path, size and modification time of a local file, or of every file under a folder; None if missing."""
    path = Path(name).expanduser()
    if not path.exists():
        return None
    # datasets' own map caches (cache-*.arrow) beside saved data are not data: other tools write them.
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("cache-"))
    )
    return {
        "path": str(path.resolve()),
        "files": [
            [str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files
        ],
    }


def load_source(source, index: int, *, cache_dir: str | None = None):
    """The rows of one source (split and slice applied, `columns` selected) as a `datasets.Dataset`.

    Raises:
        UserError: for a missing path, unknown split, malformed file, or missing columns.
    """
    with _quiet_loader():
        dataset = _load(source, index, cache_dir)
    bad_key = _key_with_nul(dataset.features)
    if bad_key is not None:
        # datasets cannot read such a row back (a KeyError deep inside it): refuse it here, by name.
        raise problem(source, index, f"the key {bad_key!r} holds a NUL character (\\x00); rename it")
    if source.columns:
        missing = [c for c in source.columns if c not in dataset.column_names]
        if missing:
            raise problem(
                source,
                index,
                f"columns {', '.join(missing)} not found; the source has {', '.join(dataset.column_names)}"
                " (fix data.datasets[].columns)",
            )
        dataset = dataset.select_columns(list(source.columns))
    return dataset


def _key_with_nul(feature: Any) -> str | None:
    """The first key, at any depth of a dataset's features, that holds a NUL character."""
    if isinstance(feature, dict):
        for key, inner in feature.items():
            found = key if "\x00" in str(key) else _key_with_nul(inner)
            if found is not None:
                return found
        return None
    inner = getattr(feature, "feature", None)  # a List or Sequence of some feature
    return _key_with_nul(inner) if inner is not None else None


@contextlib.contextmanager
def _quiet_loader():
    """Silence datasets' own error logs while loading: alignkit reports the problem itself, with the line."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_local(source, index: int) -> None:
    """Refuse a local source that cannot load, judged from the path alone (no rows read): missing, a file of
    an unknown kind, a split other than a file's one, an empty file. Shared with the dry run's pre-flight.

    Raises:
        UserError: naming the source and what to fix.
    """
    path = Path(source.path).expanduser()
    kind = local_kind(path)
    if kind is None and looks_local(source.path):
        raise problem(source, index, f"file or folder not found: {path}")
    if kind != "file":
        return
    if data_file_builder(path) is None:
        raise problem(
            source, index, f"unsupported data file {path.name}; use one of {', '.join(sorted(BUILDERS))} files"
        )
    if split_name(source.split) != "train":
        raise problem(
            source,
            index,
            f"a single data file has one split, 'train' (given {source.split!r}); use split: train (slices such as"
            " train[:10%] work) and role: test to evaluate on it",
        )
    if path.stat().st_size == 0:
        raise problem(source, index, f"{path} is empty: no rows")


def _load(source, index: int, cache_dir: str | None):
    check_local(source, index)
    path = Path(source.path).expanduser()
    kind = local_kind(path)
    if kind is None:
        dataset = _load_hub(source, index, cache_dir)
    elif kind == "file":
        dataset = _load_file(source, index, path, cache_dir)
    elif kind in ("dict", "dataset", "split-folders"):
        dataset = _load_saved(source, index, path, kind)
    else:
        dataset = _load_folder(source, index, path, cache_dir)
    return dataset


def _load_hub(source, index: int, cache_dir: str | None):
    from datasets import load_dataset

    try:
        return load_dataset(source.path, source.name, split=source.split, cache_dir=cache_dir)
    except ValueError as err:
        if "split" in str(err).lower():
            raise problem(source, index, f"split {source.split!r}: {_last_line(err)}") from None
        raise problem(source, index, f"could not load it from the Hugging Face Hub: {_last_line(err)}") from None
    except Exception as err:  # offline, not found, gated: the datasets library raises many kinds
        raise problem(
            source,
            index,
            f"not a local file or folder, and loading it from the Hugging Face Hub failed: {_last_line(err)}",
        ) from None


def _load_file(source, index: int, path: Path, cache_dir: str | None):
    from datasets import load_dataset

    builder = data_file_builder(path) or ""  # check_local refused files of unknown kinds
    if builder == "json" and path.suffix.lower() not in _COMPRESSED:
        # pyarrow's JSON reader crashes the process (a segfault) on a file of `null` lines: look first.
        shape = _json_shape_problem(path)
        if shape:
            raise problem(source, index, shape)
    kwargs: dict[str, Any] = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        return load_dataset(builder, data_files={"train": str(path)}, split=source.split, cache_dir=cache_dir, **kwargs)
    except Exception as err:
        if "corresponds to no data" in str(err):
            raise problem(source, index, f"split {source.split!r} has no rows") from None
        raise _malformed(source, index, path, builder, err) from None


def _load_folder(source, index: int, path: Path, cache_dir: str | None):
    from datasets import load_dataset

    files = [p for p in path.rglob("*") if p.is_file() and data_file_builder(p)]
    if not files:
        raise problem(
            source,
            index,
            f"folder {path} holds no data files ({', '.join(sorted(BUILDERS))}) and is not a save_to_disk folder",
        )
    try:
        return load_dataset(str(path), source.name, split=source.split, cache_dir=cache_dir)
    except ValueError as err:
        if "corresponds to no data" in str(err):
            raise problem(source, index, f"split {source.split!r} has no rows") from None
        if "split" in str(err).lower():
            raise problem(source, index, f"split {source.split!r} not found: {_last_line(err)}") from None
        raise _folder_error(source, index, files, err) from None
    except Exception as err:
        raise _folder_error(source, index, files, err) from None


def _folder_error(source, index: int, files: list[Path], err: Exception) -> UserError:
    for file in sorted(files):
        located = _find_bad_line(file, data_file_builder(file))
        if located:
            return problem(source, index, located)
    return problem(source, index, f"could not read the folder's data files: {_last_line(err)}")


def _load_saved(source, index: int, path: Path, kind: str):
    name = split_name(source.split)
    try:
        return _apply_slice(source, index, _open_saved(source, index, path, kind, name), name)
    except UserError:
        raise
    except Exception as err:  # a damaged folder, or an empty Dataset (datasets cannot re-open those)
        raise problem(source, index, f"could not open the save_to_disk folder {path}: {_last_line(err)}") from None


def _open_saved(source, index: int, path: Path, kind: str, name: str):
    from datasets import load_from_disk

    if kind == "dict":
        saved = load_from_disk(str(path))
        if name not in saved:
            raise problem(
                source, index, f"split {name!r} not found; the folder has splits {', '.join(saved)} (fix split)"
            )
        dataset = saved[name]
    elif kind == "split-folders":
        splits = sorted(child.name for child in path.iterdir() if (child / "state.json").is_file())
        if name not in splits:
            raise problem(source, index, f"split {name!r} not found; the folder has splits {', '.join(splits)}")
        dataset = load_from_disk(str(path / name))
    else:
        dataset = load_from_disk(str(path))  # one saved Dataset: the split name is not recorded, only the slice
    return dataset


def _apply_slice(source, index: int, dataset, name: str):
    spec = source.split.strip()
    if "[" not in spec:
        return dataset
    from datasets import ReadInstruction

    try:
        instruction = ReadInstruction.from_spec(spec)
        parts = instruction.to_absolute({name: len(dataset)})
    except (ValueError, AssertionError, KeyError) as err:
        raise problem(source, index, f"split {spec!r} is not a valid slice: {_last_line(err)}") from None
    indices: list[int] = []
    for part in parts:
        indices += range(part.from_, part.to)
    return dataset.select(indices)


def _malformed(source, index: int, path: Path, builder: str, err: Exception) -> UserError:
    located = _find_bad_line(path, builder)
    if located:
        return problem(source, index, located)
    return problem(source, index, f"could not read {path}: {_last_line(err)}")


def _find_bad_line(path: Path, builder: str | None) -> str | None:
    """The first line that breaks the file's format, as 'FILE:LINE: what is wrong', or None."""
    if path.suffix.lower() in _COMPRESSED:
        return None
    try:
        if builder == "json" and path.suffix.lower() == ".jsonl":
            return _bad_jsonl_line(path)
        if builder == "json":
            text = path.read_text(encoding="utf-8")
            try:
                json.loads(text)
            except json.JSONDecodeError as err:
                if err.msg.startswith("Extra data"):
                    return _bad_jsonl_line(path)  # JSON Lines in a .json file
                return f"{path}:{err.lineno}: not valid JSON ({err.msg})"
            return None
        if builder == "csv":
            return _bad_csv_line(path)
    except UnicodeDecodeError as err:
        return f"{path}: not UTF-8 text ({err.reason} at byte {err.start})"
    return None


def _json_shape_problem(path: Path) -> str | None:
    """A quick look at a JSON data file, no parsing: every JSON Lines row must open an object, and a .json file
    an object or a list; 'FILE:LINE: what is wrong', or None when it looks right."""
    lines = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip().removeprefix(b"\xef\xbb\xbf")  # a byte-order mark is no part of the row
            if not text:
                continue
            lines += 1
            opens = (b"{", b"[") if path.suffix.lower() == ".json" and lines == 1 else (b"{",)
            if not text.startswith(opens):
                found = text[:20].decode("utf-8", "replace")
                return (
                    _find_bad_line(path, "json") or f"{path}:{number}: each line must be a JSON object, found {found!r}"
                )
            if path.suffix.lower() == ".json":
                return None  # a JSON document: its first line says enough
    return None if lines else f"{path} holds only blank lines: no rows"


def _bad_jsonl_line(path: Path) -> str | None:
    keys: set[str] | None = None
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                return f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})"
            if not isinstance(row, dict):
                return f"{path}:{number}: each line must be a JSON object, found {type(row).__name__}"
            if keys is None:
                keys = set(row)
    return None


def _bad_csv_line(path: Path) -> str | None:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return f"{path}:1: empty file, no header row"
        for row in reader:
            if row and len(row) != len(header):
                return f"{path}:{reader.line_num}: {len(row)} fields where the header has {len(header)}"
    return None


def _last_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def hf_cache_dir() -> str | None:
    """Where `load_dataset` caches: under ALIGNKIT_DATA_CACHE when set, else datasets' default."""
    root = os.environ.get("ALIGNKIT_DATA_CACHE")
    return str(Path(root) / "hf") if root and root not in ("0", "off") else None
