"""The prepared columns are what TRL 1.16's trainers take: SFT labels follow alignkit's mask, nothing doubled."""

from __future__ import annotations

import json

import pytest

from alignkit.data.prepare import prepare_data
from alignkit.data.templates import ensure_chat_template
from alignkit.methods import METHODS

CHAT = [
    {"role": "user", "content": "what is 2 plus 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "and 4?"},
    {"role": "assistant", "content": "7"},
]
PAIR = {
    "prompt": [{"role": "user", "content": "what is 2 plus 3?"}],
    "chosen": [{"role": "assistant", "content": "5"}],
    "rejected": [{"role": "assistant", "content": "6"}],
}


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def prepared(tmp_path, tokenizer, method, rows, section=None, **data):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    recipe = METHODS[method].recipe.model_validate(
        {
            "model": {"name_or_path": "tiny"},
            "data": {"datasets": [{"path": str(path)}], **data},
            method: section or {},
        }
    )
    assert ensure_chat_template(tokenizer, recipe) is False  # the tiny tokenizer has ChatML's tokens already
    return prepare_data(recipe, tokenizer)


def common(tmp_path):
    return {"output_dir": str(tmp_path / "out"), "report_to": "none", "use_cpu": True, "bf16": False}


def test_sft_trainer_builds_labels_from_our_mask(tmp_path, model_and_tokenizer):
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = model_and_tokenizer
    data = prepared(tmp_path, tokenizer, "sft", [{"messages": CHAT}], {"assistant_only_loss": True, "max_length": 64})
    # assistant_only_loss stays False in SFTConfig: the mask is already in the data, and TRL's own option
    # refuses pre-tokenized rows.
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(max_length=64, **common(tmp_path)),
        train_dataset=data.train,
        processing_class=tokenizer,
    )
    row = trainer.train_dataset[0]
    assert row["input_ids"] == data.train[0]["input_ids"]
    labelled = [
        tokenizer.convert_ids_to_tokens(t)
        for t, label in zip(row["input_ids"], row["labels"], strict=True)
        if label != -100
    ]
    assert labelled == ["5", "<|im_end|>", "7", "<|im_end|>"]


def test_dpo_trainer_sees_one_eos_per_response_and_no_extra_bos(tmp_path, model_and_tokenizer):
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = model_and_tokenizer
    data = prepared(tmp_path, tokenizer, "dpo", [PAIR], {"max_length": 64, "max_prompt_length": 32})
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(max_length=64, **common(tmp_path)),
        train_dataset=data.train,
        processing_class=tokenizer,
    )
    row = trainer.train_dataset[0]
    assert tokenizer.convert_ids_to_tokens(row["chosen_ids"]) == ["5", "<|im_end|>"]
    assert tokenizer.convert_ids_to_tokens(row["rejected_ids"]) == ["6", "<|im_end|>"]
    assert tokenizer.convert_ids_to_tokens(row["prompt_ids"])[:2] == ["<|im_start|>", "user"]


def test_orpo_trainer_sees_one_bos_and_one_eos(tmp_path, model_and_tokenizer):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model, tokenizer = model_and_tokenizer
    data = prepared(tmp_path, tokenizer, "orpo", [PAIR], {"max_length": 64, "max_prompt_length": 32})
    config = ORPOConfig(max_length=64, max_completion_length=32, **common(tmp_path))
    trainer = ORPOTrainer(model=model, args=config, train_dataset=data.train, processing_class=tokenizer)
    row = trainer.train_dataset[0]
    chosen = tokenizer.convert_ids_to_tokens(row["chosen_input_ids"])
    assert chosen[:3] == ["<s>", "<|im_start|>", "user"]
    assert chosen[-3:] == ["\n", "5", "<|im_end|>"]
    assert chosen.count("<|im_end|>") == 2  # the user turn's and the response's: none appended twice


def test_a_tokenizer_that_adds_bos_itself_gets_exactly_one(tmp_path, tiny_model_dir, model_and_tokenizer):
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from alignkit.chat_templates import CHATML

    model, _ = model_and_tokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # Like Llama: plain encoding prepends <s>, and the template writes {{ bos_token }} too.
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    template = "{{ bos_token }}" + CHATML
    data = prepared(tmp_path, tokenizer, "dpo", [PAIR], {"max_prompt_length": 8}, chat_template=template)
    # the template's <s> is dropped (the trainer adds one) and the prompt keeps its last 8 - 1 tokens
    assert data.train[0]["prompt"] == "3?<|im_end|>\n<|im_start|>assistant\n"
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(max_length=64, **common(tmp_path)),
        train_dataset=data.train,
        processing_class=tokenizer,
    )
    prompt_ids = tokenizer.convert_ids_to_tokens(trainer.train_dataset[0]["prompt_ids"])
    assert prompt_ids.count("<s>") == 1 and prompt_ids[0] == "<s>"
    assert len(prompt_ids) == 8  # max_prompt_length counts the BOS the trainer adds

    sft = prepared(tmp_path / "sft", tokenizer, "sft", [{"messages": CHAT}], chat_template=template)
    tokens = tokenizer.convert_ids_to_tokens(sft.train[0]["input_ids"])
    assert tokens.count("<s>") == 1 and tokens[0] == "<s>"
    text = prepared(tmp_path / "text", tokenizer, "sft", [{"text": "hello world"}], chat_template=template)
    row = text.train[0]
    assert tokenizer.convert_ids_to_tokens(row["input_ids"]) == ["<s>", "hello", " ", "world", "<|im_end|>"]
    assert row["assistant_masks"] == [0, 1, 1, 1, 1]


def test_kto_trainer_sees_one_eos_per_completion_and_the_pair_split_in_two(tmp_path, model_and_tokenizer):
    from trl import KTOConfig, KTOTrainer

    model, tokenizer = model_and_tokenizer
    data = prepared(tmp_path, tokenizer, "kto", [PAIR], {"max_length": 64, "max_prompt_length": 32})
    config = KTOConfig(max_length=64, per_device_train_batch_size=2, **common(tmp_path))
    trainer = KTOTrainer(model=model, args=config, train_dataset=data.train, processing_class=tokenizer)
    rows = {row["label"]: row for row in trainer.train_dataset}
    assert tokenizer.convert_ids_to_tokens(rows[True]["completion_ids"]) == ["5", "<|im_end|>"]
    assert tokenizer.convert_ids_to_tokens(rows[False]["completion_ids"]) == ["6", "<|im_end|>"]
    assert tokenizer.convert_ids_to_tokens(rows[True]["prompt_ids"])[:2] == ["<|im_start|>", "user"]


def test_kto_with_a_tokenizer_that_adds_bos_itself_gets_exactly_one(tmp_path, tiny_model_dir, model_and_tokenizer):
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    from alignkit.chat_templates import CHATML

    model, _ = model_and_tokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    row = {"prompt": PAIR["prompt"], "completion": PAIR["chosen"], "label": True}
    data = prepared(
        tmp_path, tokenizer, "kto", [row], {"max_prompt_length": 8}, chat_template="{{ bos_token }}" + CHATML
    )
    assert data.train[0]["prompt"] == "3?<|im_end|>\n<|im_start|>assistant\n"
    config = KTOConfig(max_length=64, per_device_train_batch_size=2, **common(tmp_path))
    trainer = KTOTrainer(model=model, args=config, train_dataset=data.train, processing_class=tokenizer)
    prompt_ids = tokenizer.convert_ids_to_tokens(trainer.train_dataset[0]["prompt_ids"])
    assert prompt_ids.count("<s>") == 1 and prompt_ids[0] == "<s>"
    assert len(prompt_ids) == 8  # max_prompt_length counts the BOS the trainer adds
    assert tokenizer.convert_ids_to_tokens(trainer.train_dataset[0]["completion_ids"]) == ["5", "<|im_end|>"]
