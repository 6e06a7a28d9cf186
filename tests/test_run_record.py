"""What a run may write about its command: tokens never, pinned revisions always."""

from __future__ import annotations

import json

from alignkit.recipe.secrets import find_secrets, redact
from alignkit.run_record import RUN_FILE, is_finished, says_finished

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_" + "a1B2" * 8


def test_redact_hides_tokens_and_keeps_revisions():
    assert redact(f"--set hub.hub_model_id={TOKEN}") == "--set hub.hub_model_id=<redacted>"
    assert redact("--set wandb_api_key=abc") == "--set wandb_api_key=<redacted>"
    assert redact(f"--set model.revision={SHA}") == f"--set model.revision={SHA}"


def test_find_secrets():
    assert [f.path for f in find_secrets(TOKEN, "hub.hub_model_id")] == ["hub.hub_model_id"]
    assert [f.path for f in find_secrets(SHA, "logging.run_name")] == ["logging.run_name"]
    assert find_secrets(SHA, "model.revision") == []
    assert find_secrets(3e-7, "training.learning_rate") == []


def test_only_a_real_true_in_a_whole_run_file_is_finished(tmp_path):
    assert not is_finished(tmp_path / "none")
    for text, finished in [
        (json.dumps({"finished": True}), True),
        (json.dumps({"finished": "yes"}), False),
        (json.dumps({"finished": False}), False),
        (json.dumps([{"finished": True}]), False),
        ('{"finished": tr', False),
    ]:
        (tmp_path / RUN_FILE).write_text(text)
        assert is_finished(tmp_path) is finished, text
    assert says_finished({"finished": True}) and not says_finished(None) and not says_finished({"finished": 1})
