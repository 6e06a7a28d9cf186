"""The offline demo learns as promised: exact match from about 0% to something short of perfect after SFT, higher
(at least 60%) after one round of rejection sampling, kept by DPO while its preference accuracy reaches at least
90%, and the reward model scores the right sum above the wrong one on at least 85% of the held-out pairs (the
demo's own bar; it measures 91.5% with its seed, issue 10 asks 90%); the exact match and
win rates come from the pipeline's `alignkit eval` scorecard. Runs the real
`python -m alignkit.demo` (`alignkit run --recipe tiny-demo`) in a scratch folder (a few minutes on two CPU
cores)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_learns(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    result = subprocess.run(
        [sys.executable, "-m", "alignkit.demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = {
        label: (float(em), float(pref))
        for label, em, _, pref in re.findall(
            r"│ (base model|after SFT|after rejection sampling|after DPO)\s*│\s*([\d.]+)%\s*│\s*([\d.]+%|baseline)"
            r"\s*│\s*([\d.]+)%",
            result.stdout,
        )
    }
    assert set(table) == {"base model", "after SFT", "after rejection sampling", "after DPO"}, result.stdout[-2000:]
    assert table["base model"][0] <= 5.0
    assert table["after rejection sampling"][0] > table["after SFT"][0]
    assert table["after rejection sampling"][0] >= 60.0
    assert table["after DPO"][0] >= table["after rejection sampling"][0] - 1.0
    assert table["after DPO"][1] >= 90.0
    reward = re.search(r"│ reward model\s*│\s*n/a\s*│\s*n/a\s*│\s*([\d.]+)%", result.stdout)
    assert reward is not None, result.stdout[-2000:]
    assert float(reward[1]) >= 85.0
    # The exact match the table shows is the scorecard's (`alignkit eval`, the pipeline's last stage).
    card = json.loads((tmp_path / "outputs" / "tiny-demo-eval" / "eval_results.json").read_text())
    exact = {r["model"]: r["value"] for r in card["results"] if r["metric"] == "exact_match:answer"}
    assert (
        round(100 * exact["dpo"], 1) == table["after DPO"][0]
        and round(100 * exact["base"], 1) == table["base model"][0]
    )
    assert {r["metric"] for r in card["results"] if r["part"] == "judge"} >= {"win_rate", "tie_rate", "loss_rate"}
    sampled = json.loads((tmp_path / "outputs" / "tiny-demo-sample" / "alignkit_sample.json").read_text())
    assert sampled["counts"]["prompts"] == 4000 and sampled["counts"]["selected_rows"] > 0
    selected = (tmp_path / "outputs" / "tiny-demo-sample" / "selected.jsonl").read_text().splitlines()
    assert len(selected) == sampled["counts"]["selected_rows"]
    for stage in ("sft", "sft-rs", "dpo", "rm"):
        run = tmp_path / "outputs" / f"tiny-demo-{stage}"
        assert (run / "model.safetensors").is_file()
        assert (run / "README.md").is_file()
