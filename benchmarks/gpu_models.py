"""Model shapes of the GPU check, built from a config with random weights (no hub), and their chat data.

`1b` is Llama-3.2-1B's shape, `7b` Mistral-7B's; `tiny` is a few-MB Llama of the same build path, so every
step of the check runs on a CPU too. The tokenizer is the offline demo's word-level one: its vocabulary is
far smaller than the models', which changes nothing about the compute per token (the embedding and output
layers keep the real shapes). On CUDA the weights are created on the GPU in bf16 and saved with
safetensors, which takes seconds for the 7B shape where a CPU initialisation would take minutes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SHAPES = {
    "tiny": {
        "architecture": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 256,
        "vocab_size": 1024,
        "tie_word_embeddings": True,
        "max_position_embeddings": 1024,
    },
    "1b": {
        "architecture": "llama",
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "max_position_embeddings": 2048,
        "rope_theta": 500000.0,
    },
    "7b": {
        "architecture": "mistral",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
    },
}


def built_model(root: Path, shape: str, timeout: float | None = None) -> dict:
    """The model of `shape` under `root` (built in a fresh process unless an earlier step left it there) and the
    chats beside it: {"model", "data", "shape", "parameters", "dtype"}."""
    from fresh_process import spawn

    record = root / "built.json"
    if record.is_file():
        found = json.loads(record.read_text(encoding="utf-8"))
        if found.get("shape") == shape:
            return found
    found = spawn(__file__, str(root), shape, timeout=timeout)
    record.write_text(json.dumps(found), encoding="utf-8")
    return found


def build_model(path: Path, shape: str, seed: int = 0) -> dict:
    """Write a random model of `shape` and the demo tokenizer to `path`; return its parameter count and dtype."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from alignkit.demo.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    fields = dict(SHAPES[shape])
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = AutoConfig.for_model(fields.pop("architecture"), **fields, **ids, pad_token_id=tokenizer.pad_token_id)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(seed)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    parameters = model.num_parameters()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    if cuda:
        torch.cuda.empty_cache()
    return {"shape": shape, "parameters": parameters, "dtype": str(dtype).removeprefix("torch.")}


def write_chats(root: Path) -> Path:
    """The reference workload's 1,024 synthetic chats with log-normal lengths (benchmarks/reference_workload.py)."""
    from reference_workload import build_workload

    return build_workload(root)["sft"]


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    from fresh_process import answer

    _, root, shape = sys.argv[1:]
    info = build_model(Path(root) / "model", shape)
    sys.exit(answer({**info, "model": str(Path(root) / "model"), "data": str(write_chats(Path(root) / "data"))}))
