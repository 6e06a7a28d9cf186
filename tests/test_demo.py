"""The offline demo learns as promised: exact match from about 0% to at least 60% after SFT, DPO keeps it while
its preference accuracy reaches at least 90%, and the reward model scores the right sum above the wrong one in
at least 70% of the held-out pairs. Runs the real `python -m alignkit.demo` in a scratch
folder (a few minutes on two CPU cores)."""

from __future__ import annotations

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
        for label, em, pref in re.findall(
            r"│ (base model|after SFT|after DPO)\s*│\s*([\d.]+)%\s*│\s*([\d.]+)%", result.stdout
        )
    }
    assert set(table) == {"base model", "after SFT", "after DPO"}, result.stdout[-2000:]
    assert table["base model"][0] <= 5.0
    assert table["after SFT"][0] >= 60.0
    assert table["after DPO"][0] >= table["after SFT"][0]
    assert table["after DPO"][1] >= 90.0
    reward = re.search(r"│ reward model\s*│\s*n/a\s*│\s*([\d.]+)%", result.stdout)
    assert reward is not None, result.stdout[-2000:]
    assert float(reward[1]) >= 55.0
    for stage in ("sft", "dpo", "rm"):
        run = tmp_path / "outputs" / f"tiny-demo-{stage}"
        assert (run / "model.safetensors").is_file()
        assert (run / "README.md").is_file()
