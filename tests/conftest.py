"""Shared test set-up: no network, no telemetry, and helpers to run the CLI."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    WANDB_MODE="disabled",
    TRL_EXPERIMENTAL_SILENCE="1",
    TOKENIZERS_PARALLELISM="false",
)
os.environ.pop("ALIGNKIT_DEBUG", None)
# Tests never read or fill the user's data cache (~/.cache/alignkit/data). This session-wide one serves
# module- and session-scoped fixtures; each test gets its own (`_own_data_cache_and_no_mirrors` below).
os.environ["ALIGNKIT_DATA_CACHE"] = tempfile.mkdtemp(prefix="alignkit-test-cache-")
os.environ.pop("ALIGNKIT_MIRRORS", None)  # a developer's mirror file would change every recipe the tests resolve
# Human-readable output is laid out for a pipe in tests; a COLUMNS from the shell would re-wrap it.
os.environ.pop("COLUMNS", None)

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path | None:
    """The ../shared folder beside the checkout (CI puts it there), if present."""
    candidate = Path(os.environ.get("ALIGNKIT_SHARED", REPO.parent / "shared"))
    return candidate if candidate.is_dir() else None


@pytest.fixture(autouse=True)
def _own_data_cache_and_no_mirrors(tmp_path, monkeypatch):
    """Every test starts with its own empty data cache, `tmp_path / "cache"`, and no ALIGNKIT_MIRRORS file."""
    monkeypatch.setenv("ALIGNKIT_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ALIGNKIT_MIRRORS", raising=False)


@pytest.fixture
def cli():
    """Run the alignkit CLI in-process and return the result (exit_code, stdout, stderr, output)."""
    from typer.testing import CliRunner

    from alignkit.cli import app

    runner = CliRunner()

    def invoke(*args: str, **kwargs):
        return runner.invoke(app, [str(a) for a in args], **kwargs)

    return invoke


@pytest.fixture
def write_recipe(tmp_path):
    """Write a YAML text into a temporary recipe file and return its path."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


MINIMAL_SFT = """\
model:
  name_or_path: some/model
data:
  datasets:
    - path: {data}
training:
  output_dir: {output_dir}
"""
"""A recipe of a chat method with `{output_dir}` and `{data}` to fill in (`chat_file` writes a data file)."""


def chat_file(folder: Path, name: str = "train.jsonl") -> Path:
    """A one-conversation data file in `folder`: a recipe's local data must exist for a dry run to pass."""
    path = folder / name
    row = '{"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}]}'
    path.write_text(row + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 32) and its word-level tokenizer with a ChatML template, built locally."""
    from alignkit.demo.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama") / "model", hidden_size=32, intermediate_size=64)


@pytest.fixture
def small_llama():
    """Builds an in-memory 2-layer Llama (hidden 32, 4 query heads, seeded weights) with `kv_heads` key/value
    heads: the same weights every call, so two builds compare kernels or settings."""

    def build(kv_heads: int = 4):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        shape = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
        config = LlamaConfig(**shape, num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128)
        return LlamaForCausalLM(config)

    return build


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are skipped where torch sees no CUDA device (torch is imported only if one is collected)."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is false)")
    for item in gpu_tests:
        item.add_marker(skip)
