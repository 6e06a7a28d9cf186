"""The prepared-data cache: one folder per content fingerprint, so a second run skips preprocessing.

The fingerprint covers what decides the result: the data section and the method's length/masking fields,
the tokenizer (vocabulary, special tokens, chat template), each source's content signature (local files by
path, size and modification time; Hub datasets by the fingerprint `datasets` gives them) and the benchmark
files. `data.num_proc` is left out: workers change the speed, not the rows. Entries are written to a
temporary folder and renamed into place, so ranks racing on a shared disk never read half an entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

# Bumped whenever the rows a recipe produces change (2: plain-text pairs untemplated, chat_template_kwargs;
# 3: a single source's training rows keep its order).
FORMAT_VERSION = 3
"""Bumped whenever preprocessing changes what it produces, so old entries are not reused."""


def cache_root() -> Path | None:
    """ALIGNKIT_DATA_CACHE, or ~/.cache/alignkit/data; None when set to 0/off (no caching)."""
    value = os.environ.get("ALIGNKIT_DATA_CACHE")
    if value in ("0", "off"):
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "alignkit" / "data"


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what the tokenizer does to text: its vocabulary and rules, special tokens and template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(type(tokenizer).__name__.encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update((getattr(tokenizer, "chat_template", None) or "").encode())
    digest.update(str(getattr(tokenizer, "add_bos_token", None)).encode())
    return digest.hexdigest()


def fingerprint(parts: dict[str, Any]) -> str:
    payload = json.dumps({"version": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@contextlib.contextmanager
def scratch():
    """A folder for intermediate map outputs, removed afterwards; None when caching is off (work in memory).

    Without it `datasets` writes map outputs beside the source's own Arrow files, into the user's
    `save_to_disk` folder.
    """
    root = cache_root()
    if root is None:
        yield None
        return
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".scratch-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def entry(key: str) -> Path | None:
    root = cache_root()
    return None if root is None else root / key


def load(key: str):
    """(train, test, report dict) from the cache, or None on a miss."""
    folder = entry(key)
    if folder is None or not (folder / "report.json").is_file():
        return None
    from datasets import load_from_disk

    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        train = load_from_disk(str(folder / "train"))
        test = load_from_disk(str(folder / "test")) if (folder / "test").is_dir() else None
    except (OSError, ValueError, FileNotFoundError):
        return None  # a damaged entry is rebuilt, never trusted
    return train, test, report


def store(key: str, train, test, report: dict[str, Any]):
    """Write an entry and return it re-opened from disk (memory-mapped), or the inputs when caching is off."""
    folder = entry(key)
    if folder is None:
        return train, test
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        # One writer: datasets' parallel save spawns fresh interpreters, which costs more than it saves here.
        train.save_to_disk(str(staging / "train"))
        if test is not None:
            test.save_to_disk(str(staging / "test"))
        (staging / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        try:
            os.replace(staging, folder)
        except OSError:
            if not (folder / "report.json").is_file():  # another rank lost the race halfway: take its place
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    cached = load(key)
    if cached is None:
        return train, test
    return cached[0], cached[1]
