"""The shape of a decoder-only model as the memory plan needs it, read from its `config.json` alone.

Llama, Mistral, Qwen 2/3, Gemma 1/2/3 and Mixtral-style decoders share one layout: token embeddings, N decoder
layers of attention (grouped-query: `num_key_value_heads` key/value heads) and a gated MLP (gate, up, down)
with RMSNorms, a final norm, and an output head that may share the embedding matrix. `ModelShape` counts their
parameters exactly from the config. Nothing is downloaded: the config comes from a local folder (or a LoRA
adapter folder's base model) or from a copy already in the Hugging Face cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from alignkit.errors import Problem, UserError

_TIED_BY_DEFAULT = ("gemma", "gemma2", "gemma3", "gemma3_text")
"""Model types whose config class ties the output head to the embeddings when the file does not say."""
_QKV_BIAS = ("qwen2", "qwen2_moe")
"""Model types whose query/key/value projections always carry a bias."""
_FOUR_NORMS = ("gemma2", "gemma3", "gemma3_text")
"""Model types with norms before and after both the attention and the MLP."""
_QK_NORM = ("qwen3", "qwen3_moe", "gemma3", "gemma3_text")
"""Model types that normalise queries and keys per head."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer."""

    source: str
    """The config.json the shape was read from."""
    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    """The output head shares the embedding matrix."""
    max_positions: int
    experts: int = 1
    """MLP experts per layer (Mixtral-style mixture of experts); 1 for a dense MLP."""
    experts_per_token: int = 1
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norms_per_layer: int = 2
    qk_norm: bool = False

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """(inputs, outputs) of each linear layer of one decoder layer, by the module name LoRA targets."""
        return {
            "q_proj": (self.hidden, self.q_dim),
            "k_proj": (self.hidden, self.kv_dim),
            "v_proj": (self.hidden, self.kv_dim),
            "o_proj": (self.q_dim, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }

    def linear_parameters(self) -> int:
        """Weights of one layer's linear layers (the ones 4-bit quantisation packs), every expert counted."""
        attention = sum(
            i * o for name, (i, o) in self.linears().items() if not name.endswith(("gate_proj", "up_proj", "down_proj"))
        )
        mlp = 3 * self.hidden * self.intermediate * self.experts
        return attention + mlp

    def layer_parameters(self) -> int:
        biases = (self.q_dim + 2 * self.kv_dim) * self.qkv_bias + self.hidden * self.o_bias
        biases += (2 * self.intermediate + self.hidden) * self.mlp_bias * self.experts
        router = self.hidden * self.experts if self.experts > 1 else 0
        norms = self.norms_per_layer * self.hidden + 2 * self.head_dim * self.qk_norm
        return self.linear_parameters() + biases + router + norms

    def embedding_parameters(self) -> int:
        """The embeddings and, when it is not tied to them, the output head."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def parameters(self) -> int:
        return self.embedding_parameters() + self.layers * self.layer_parameters() + self.hidden


def shape_from_config(config: dict, source: str) -> ModelShape:
    """Read a decoder's shape from its config mapping (a multimodal config's `text_config` for its decoder)."""
    if isinstance(config.get("text_config"), dict) and "hidden_size" not in config:
        config = {**config["text_config"], "tie_word_embeddings": config.get("tie_word_embeddings")}
    missing = [
        key for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads") if key not in config
    ]
    if missing:
        raise UserError(
            Problem(
                source=source,
                message=f"has no {', '.join(missing)}; the memory plan reads Llama, Mistral, Qwen and Gemma-style"
                " decoder configs",
            )
        )
    kind = str(config.get("model_type", ""))
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    tied = config.get("tie_word_embeddings")
    return ModelShape(
        source=source,
        model_type=kind,
        vocab=int(config["vocab_size"]),
        hidden=hidden,
        layers=int(config["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        intermediate=int(config.get("intermediate_size") or 4 * hidden),
        tied=bool(kind in _TIED_BY_DEFAULT if tied is None else tied),
        max_positions=int(config.get("max_position_embeddings") or 4096),
        experts=int(config.get("num_local_experts") or config.get("num_experts") or 1),
        experts_per_token=int(config.get("num_experts_per_tok") or 1),
        qkv_bias=bool(config.get("attention_bias", kind in _QKV_BIAS)),
        o_bias=bool(config.get("attention_bias", False)),
        mlp_bias=bool(config.get("mlp_bias", False)),
        norms_per_layer=4 if kind in _FOUR_NORMS else 2,
        qk_norm=kind in _QK_NORM,
    )


def read_shape(name_or_path: str) -> ModelShape:
    """The shape of the model `name_or_path` names (a local folder or a Hub id cached on this machine).

    Raises:
        UserError: when no local config.json can be found, or it is not a decoder config.
    """
    path = config_file(name_or_path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(Problem(source=str(path), message=f"cannot be read as JSON ({error})")) from None
    return shape_from_config(config, str(path))


def config_file(name_or_path: str, *, follow_adapter: bool = True) -> Path:
    """The config.json of a local model folder, of a LoRA adapter folder's base, or of a cached Hub model."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if (folder / "config.json").is_file():
            return folder / "config.json"
        adapter = folder / "adapter_config.json"
        if follow_adapter and adapter.is_file():
            base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
            if base:
                return config_file(str(base), follow_adapter=False)
        raise UserError(Problem(source="recipe", path="model.name_or_path", message=f"{folder} has no config.json"))
    cached = _cached_config(name_or_path)
    if cached is not None:
        return cached
    raise UserError(
        Problem(
            source="recipe",
            path="model.name_or_path",
            message=f"no local config.json for {name_or_path!r}: the memory plan reads the model's shape from it and"
            f" never downloads; fetch it with `hf download {name_or_path} config.json` (it lands in the Hugging Face"
            " cache, which is read), or give a local model folder (model.name_or_path or --mirror)",
        )
    )


def _cached_config(repo_id: str) -> Path | None:
    """config.json of `repo_id` in the Hugging Face hub cache, its `main` snapshot first."""
    if repo_id.count("/") != 1:
        return None
    home = os.environ.get("HF_HOME") or str(Path("~/.cache/huggingface").expanduser())
    cache = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or Path(home) / "hub")
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    main = repo / "refs" / "main"
    snapshots = [main.read_text(encoding="utf-8").strip()] if main.is_file() else []
    if (repo / "snapshots").is_dir():
        snapshots += sorted(p.name for p in (repo / "snapshots").iterdir())
    for snapshot in snapshots:
        candidate = repo / "snapshots" / snapshot / "config.json"
        if candidate.is_file():
            return candidate
    return None
