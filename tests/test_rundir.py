"""What a run may write about its command: tokens never, pinned revisions always."""

from __future__ import annotations

from alignkit.rundir import looks_like_secret, redact

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_" + "a1B2" * 8


def test_redact_hides_tokens_and_keeps_revisions():
    assert redact(f"--set hub.hub_model_id={TOKEN}") == "--set hub.hub_model_id=<redacted>"
    assert redact("--set wandb_api_key=abc") == "--set wandb_<redacted>"
    assert redact(f"--set model.revision={SHA}") == f"--set model.revision={SHA}"


def test_looks_like_secret():
    assert looks_like_secret(f"hub.hub_model_id={TOKEN}")
    assert looks_like_secret(f"logging.run_name={SHA}")
    assert not looks_like_secret(f"model.revision={SHA}")
    assert not looks_like_secret("training.learning_rate=3e-7")
