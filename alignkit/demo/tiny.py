"""Build a tiny Llama-shaped model and a tokenizer locally, with no hub access.

Used by `make demo` and by the tests. The tokenizer is a word-level one over a small vocabulary with each
digit a token of its own (so arithmetic is learnable), ChatML special tokens and a ChatML template. It is
saved as `PreTrainedTokenizerFast` so transformers 4 and 5 both load it.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignkit.chat_templates import CHATML

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
WORDS = [
    "user",
    "assistant",
    "system",
    "what",
    "is",
    "the",
    "sum",
    "of",
    "and",
    "plus",
    "minus",
    "answer",
    "question",
    "please",
    "add",
    "numbers",
    "you",
    "are",
    "a",
    "helpful",
    "tiny",
    "model",
    "hello",
    "world",
    "good",
    "bad",
    "right",
    "wrong",
    "yes",
    "no",
    "text",
    "about",
    "cats",
    "dogs",
    "sun",
    "rain",
    "day",
    "night",
    "red",
    "blue",
    "green",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
]
SYMBOLS = [*"0123456789+-=?.,:!'\"() ", "\n"]


def build_tokenizer(extra_words: list[str] | None = None):
    """A fast word-level tokenizer: special tokens, words, digits and punctuation."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_tokens = SPECIAL_TOKENS + SYMBOLS + sorted(set(WORDS + (extra_words or [])))
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_tokens))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Every digit, space, newline and punctuation mark is a token of its own, so text round-trips exactly.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[A-Za-z]+|[^A-Za-z]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def build_tiny_model(
    path: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised Llama and its tokenizer to `path` and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    _portable_tokenizer_class(path)
    return path


def _portable_tokenizer_class(path: Path) -> None:
    """Record PreTrainedTokenizerFast: transformers 5 writes TokenizersBackend, which transformers 4 cannot load."""
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
