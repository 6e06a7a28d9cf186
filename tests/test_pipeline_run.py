"""`alignkit run` (stage order, skipping, resuming, stale stages, dry runs, scans) and mirror files, without training.

The training engine is replaced by a stand-in that records each stage and marks it finished as a real run
does; tests/test_recipe_smoke.py trains the real pipeline on the tiny model.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.errors import UserError
from alignkit.recipe.mirrors import load_mirrors
from alignkit.recipe.resolve import resolve_recipe


@pytest.fixture
def trained(monkeypatch):
    """Replace the training engine: record (stage output, method, model) and mark the run finished."""
    calls: list[tuple[str, str, str]] = []

    def fake_run(resolved, plan, options, *, overwrite=False, argv=None, echo=print):
        out = resolved.output_dir
        out.mkdir(parents=True, exist_ok=True)
        calls.append((out.name, resolved.method, resolved.recipe.model.name_or_path))
        (out / "alignkit_run.json").write_text(json.dumps({"method": resolved.method, "finished": True}))

    monkeypatch.setattr("alignkit.launch.start.start_training", fake_run)
    return calls


def _finish(folder: Path, finished: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alignkit_run.json").write_text(json.dumps({"method": "x", "finished": finished}))


# ---- alignkit run ----


def test_run_trains_every_stage_in_order_then_skips_them(cli, trained, tmp_path):
    root = tmp_path / "runs"
    result = cli("run", "--recipe", "gpt2-nl", "-o", root)
    assert result.exit_code == 0, result.output
    assert trained == [
        ("cpt", "cpt", "gpt2"),
        ("sft", "sft", str(root / "cpt")),
        ("dpo", "dpo", str(root / "sft")),
    ]
    assert result.stdout.splitlines() == [
        f"stage cpt: cpt with recipe gpt2-nl -> {root / 'cpt'}",
        f"stage sft: sft with recipe gpt2-nl, from stage cpt -> {root / 'sft'}",
        f"stage dpo: dpo with recipe gpt2-nl, from stage sft -> {root / 'dpo'}",
        "pipeline gpt2-nl: all 3 stages finished",
    ]
    again = cli("run", "--recipe", "gpt2-nl", "-o", root)
    assert again.exit_code == 0, again.output
    assert len(trained) == 3, "nothing trains twice"
    assert again.stdout.splitlines() == [
        "stage cpt: finished, skipped",
        "stage sft: finished, skipped",
        "stage dpo: finished, skipped",
        "pipeline gpt2-nl: all 3 stages finished",
    ]


def test_run_resumes_at_the_first_unfinished_stage(cli, trained, tmp_path):
    _finish(tmp_path / "cpt")
    _finish(tmp_path / "sft", finished=False)  # crashed mid-run: it runs again (and resumes its checkpoints)
    result = cli("run", "--recipe", "gpt2-nl", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert [call[0] for call in trained] == ["sft", "dpo"]
    assert result.stdout.splitlines()[0] == "stage cpt: finished, skipped"


def test_overwrite_retrains_every_stage(cli, trained, tmp_path):
    for stage in ("sft", "dpo"):
        _finish(tmp_path / stage)
    result = cli("run", "--recipe", "zephyr-7b-beta", "-o", tmp_path, "--overwrite")
    assert result.exit_code == 0, result.output
    assert [call[0] for call in trained] == ["sft", "dpo"]


def test_a_finished_stage_after_one_that_retrains_is_refused(cli, trained, tmp_path):
    _finish(tmp_path / "dpo")  # dpo finished, but its sft start point has not: it would be stale
    result = cli("run", "--recipe", "zephyr-7b-beta", "-o", tmp_path)
    assert result.exit_code == 2
    assert trained == []
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'dpo'}: stage dpo is finished, but it starts from stage sft, which has not finished"
        f" and trains now, so dpo would be stale; pass --overwrite to retrain every stage, or remove"
        f" {tmp_path / 'dpo'} to retrain it after sft"
    )


def test_a_stage_that_ends_unfinished_stops_the_pipeline(cli, monkeypatch, tmp_path):
    def unfinished_run(resolved, plan, options, **kwargs):
        _finish(resolved.output_dir, finished=False)

    monkeypatch.setattr("alignkit.launch.start.start_training", unfinished_run)
    result = cli("run", "--recipe", "zephyr-7b-beta", "-o", tmp_path)
    assert result.exit_code == 1
    assert f"error: stage sft ended without marking {tmp_path / 'sft'} finished; rerun to resume" in result.stderr
    assert not (tmp_path / "dpo").exists()


def test_run_dry_run_json(cli, tmp_path):
    _finish(tmp_path / "mid")
    result = cli(
        "run", "--recipe", "smollm3", "-o", tmp_path, "--set", "apo:dpo.beta=0.2", "--launch", "none", "--dry-run"
    )
    assert result.exit_code == 0, result.output
    assert "next: sft" in result.stdout
    document = json.loads(
        cli("run", "--recipe", "smollm3", "-o", tmp_path, "--set", "apo:dpo.beta=0.2", "--dry-run", "--json").stdout
    )
    assert (document["pipeline"], document["next"]) == ("smollm3", "sft")
    assert document["description"] == "SmolLM3, mid-training then SFT then APO"
    stages = document["stages"]
    assert [(s["stage"], s["method"], s["recipe"], s["from"], s["finished"], s["runs"]) for s in stages] == [
        ("mid", "sft", "smollm3:mid", None, True, False),
        ("sft", "sft", "smollm3", "mid", False, True),
        ("apo", "dpo", "smollm3", "sft", False, True),
    ]
    assert stages[2]["model"] == str(tmp_path / "sft")
    assert stages[0]["launch"]["profile"] == "zero3" and stages[0]["launch"]["recipe_gpus"] == 8
    assert not any(tmp_path.glob("sft*")), "a dry run writes nothing"


def test_run_errors(cli, tmp_path):
    no_pipeline = cli("run", "--recipe", "smollm", "--dry-run")
    assert no_pipeline.exit_code == 2
    assert no_pipeline.stderr.strip() == (
        "error: --recipe: recipe 'smollm' has no pipeline (pipeline.yaml); run its stage directly:"
        " `alignkit sft --recipe smollm`"
    )
    json_alone = cli("run", "--recipe", "zephyr-7b-beta", "--json")
    assert json_alone.exit_code == 2 and "error: --json: --json needs --dry-run" in json_alone.stderr
    bad_stage = cli("run", "--recipe", "zephyr-7b-beta", "--set", "orpo:orpo.beta=0.1", "--dry-run")
    assert bad_stage.exit_code == 2 and "no stage 'orpo' in this pipeline; stages: sft, dpo" in bad_stage.stderr
    bad_launch = cli("run", "--recipe", "zephyr-7b-beta", "--launch", "zero4", "--dry-run")
    assert bad_launch.exit_code == 2 and "unknown profile 'zero4'; did you mean zero3?" in bad_launch.stderr
    unknown = cli("run", "--recipe", "zephyr-7b-bta", "--dry-run")
    assert unknown.exit_code == 2
    assert unknown.stderr.strip() == (
        "error: --recipe: unknown recipe 'zephyr-7b-bta'; did you mean zephyr-7b-beta? (see `alignkit recipes list`)"
    )


def test_run_and_dry_runs_stay_light():
    heavy = "{'torch', 'transformers', 'trl', 'datasets', 'accelerate', 'peft', 'deepspeed', 'bitsandbytes'}"
    code = (
        "import sys\nfrom alignkit.cli import app\n"
        "for args in (['run', '--recipe', 'zephyr-7b-beta', '--dry-run'], ['run', '--recipe', 'smollm3', '--dry-run',"
        " '--json'], ['run', '--recipe', 'pref-align-scan:scan', '--dry-run']):\n"
        "    try:\n        app(args, standalone_mode=False)\n    except SystemExit:\n        pass\n"
        f"print(sorted({heavy} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ---- alignkit run NAME:scan ----

SCAN = "pref-align-scan:scan"


def test_scan_dry_run_lists_every_point_and_the_next_command(cli, tmp_path):
    _finish(tmp_path / "pref-align-scan-sigmoid-beta-0.01")
    result = cli("run", "--recipe", SCAN, "-o", tmp_path, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].rstrip() == (
        f"scan {SCAN}: the handbook's preference-alignment scan, 2 recipes x (DPO, IPO, KTO) x 10 betas"
    )
    rows = [line for line in lines if line.startswith("│ ")]
    assert len(rows) == 60
    cells = [[cell.strip() for cell in row.strip("│ ").split("│")] for row in rows]
    assert cells[0] == [
        "1",
        "pref-align-scan",
        "dpo.loss_type=sigmoid dpo.beta=0.01",
        str(tmp_path / "pref-align-scan-sigmoid-beta-0.01"),
        "zero3, 1 process(es)",
        "finished, skipped",
    ]
    assert cells[39][:3] == ["40", "pref-align-scan:openhermes", "dpo.loss_type=ipo dpo.beta=0.9"]
    assert cells[59][:3] == ["60", "pref-align-scan:openhermes", "kto.beta=0.9"]
    assert [c[5] for c in cells[1:]] == ["train"] * 59
    assert lines[-3:] == [
        "dry run: every point valid; next: 2.",
        "59 of 60 points train, one after another; point 2 alone:",
        "alignkit dpo --recipe pref-align-scan --set dpo.loss_type=sigmoid --set dpo.beta=0.1"
        f" --set hub.revision=sigmoid-0.1 --output-dir {tmp_path / 'pref-align-scan-sigmoid-beta-0.1'}",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pref-align-scan-sigmoid-beta-0.01"], "writes nothing"


def test_scan_dry_run_json(cli, tmp_path):
    sets = ("--set", "training.max_steps=5", "--set", "dpo.max_length=768")
    result = cli("run", "--recipe", SCAN, "--qlora", *sets, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["scan"], document["next"]) == (SCAN, 1)
    points = document["points"]
    assert [p["point"] for p in points] == list(range(1, 61))
    last = {key: value for key, value in points[-1].items() if key != "launch"}
    # A method's section in --set (dpo.max_length) reaches only that method's points.
    assert last == {
        "point": 60,
        "method": "kto",
        "recipe": "pref-align-scan:openhermes",
        "settings": ["kto.beta=0.9"],
        "output_dir": "outputs/pref-align-scan-openhermes-kto-beta-0.9",
        "command": "alignkit kto --recipe pref-align-scan:openhermes --qlora --set kto.beta=0.9"
        " --set hub.revision=kto-0.9 --set training.max_steps=5"
        " --output-dir outputs/pref-align-scan-openhermes-kto-beta-0.9",
        "finished": False,
        "runs": True,
    }
    assert points[39]["command"] == (
        "alignkit dpo --recipe pref-align-scan:openhermes --qlora --set dpo.loss_type=ipo --set dpo.beta=0.9"
        " --set hub.revision=ipo-0.9 --set training.max_steps=5 --set dpo.max_length=768"
        " --output-dir outputs/pref-align-scan-openhermes-ipo-beta-0.9"
    )
    assert points[-1]["launch"]["world_size"] == 1
    # The qlora notices are said once per recipe, not once per point.
    assert len([n for n in document["notices"] if n.startswith("pref-align-scan:openhermes: ")]) == len(
        [n for n in document["notices"] if n.startswith("pref-align-scan: ")]
    )
    assert len(document["notices"]) == len(set(document["notices"])) > 0


def test_scan_trains_its_points_in_order_and_a_rerun_skips_the_finished(cli, monkeypatch, tmp_path):
    calls = []

    def fake_run(resolved, plan, options, *, overwrite=False, argv=None, echo=print):
        section = resolved.recipe.section
        calls.append((resolved.output_dir.name, section.loss_type, section.beta, resolved.recipe.hub.revision, argv))
        _finish(resolved.output_dir)

    monkeypatch.setattr("alignkit.launch.start.start_training", fake_run)
    _finish(tmp_path / "pref-align-scan-sigmoid-beta-0.01")
    _finish(tmp_path / "pref-align-scan-sigmoid-beta-0.1", finished=False)  # interrupted: it trains again
    result = cli("run", "--recipe", SCAN, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert len(calls) == 59
    first = tmp_path / "pref-align-scan-sigmoid-beta-0.1"
    assert calls[0] == (
        first.name,
        "sigmoid",
        0.1,
        "sigmoid-0.1",
        shlex.split(
            "alignkit dpo --recipe pref-align-scan --set dpo.loss_type=sigmoid --set dpo.beta=0.1"
            f" --set hub.revision=sigmoid-0.1 --output-dir {first}"
        ),
    )
    assert calls[38][:4] == ("pref-align-scan-openhermes-ipo-beta-0.9", "ipo", 0.9, "ipo-0.9")
    assert calls[-1][:4] == ("pref-align-scan-openhermes-kto-beta-0.9", "kto", 0.9, "kto-0.9")
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        "point 1/60: finished, skipped",
        f"point 2/60: dpo with recipe pref-align-scan, dpo.loss_type=sigmoid dpo.beta=0.1 -> {first}",
    ]
    assert lines[-1] == f"scan {SCAN}: all 60 points finished"
    again = cli("run", "--recipe", SCAN, "-o", tmp_path)
    assert again.exit_code == 0, again.output
    assert len(calls) == 59, "nothing trains twice"
    assert again.stdout.splitlines() == [f"point {n}/60: finished, skipped" for n in range(1, 61)] + [
        f"scan {SCAN}: all 60 points finished"
    ]


def test_scan_errors(cli):
    def fails(args, message):
        result = cli("run", "--recipe", *args, "--dry-run")
        assert result.exit_code == 2
        assert result.stderr.strip() == message

    fails(
        ["pref-algn-scan:scan"],
        "error: --recipe: unknown recipe 'pref-algn-scan:scan'; did you mean pref-align-scan:scan?"
        " (see `alignkit recipes list`)",
    )
    fails(
        ["zephyr-7b-beta:scan"],
        "error: --recipe: recipe 'zephyr-7b-beta' has no scan (scan.yaml); the scans are: pref-align-scan:scan",
    )
    fails(
        ["pref-align-scan"],
        "error: --recipe: recipe 'pref-align-scan' has no pipeline (pipeline.yaml); run its stage directly:"
        " `alignkit dpo --recipe pref-align-scan`, or its scan: `alignkit run --recipe pref-align-scan:scan`",
    )
    fails(
        [SCAN, "--set", "dpo.beta=0.3", "--set", "dpo:dpo.beta=0.3"],
        "error: --set dpo.beta=0.3: the scan varies dpo.beta (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9);"
        " to train one value, run `alignkit dpo --recipe pref-align-scan --set dpo.beta=0.3`\n"
        "error: --set dpo:dpo.beta=0.3: a scan has no stages; give PATH=VALUE, which reaches every point",
    )


# ---- mirrors ----


def _mirrors(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mirrors.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_mirrors_swap_models_tokenizers_and_datasets(cli, tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "hermes").mkdir()  # the run needs its data: a dry run refuses a missing one
    path = _mirrors(
        tmp_path,
        "HuggingFaceTB/SmolLM-360M: models/base\n"
        "HuggingFaceTB/SmolLM-360M-Instruct: /abs/tokenizer\n"
        "HuggingFaceTB/OpenHermes-2.5-H4: ~/hermes\n"
        "nobody/uses-this: /x\n",
    )
    result = cli("sft", "--recipe", "smollm", "--mirror", path, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    model = document["recipe"]["model"]
    assert model["name_or_path"] == str(tmp_path / "models" / "base"), "relative to the mirror file"
    assert model["tokenizer_name_or_path"] == "/abs/tokenizer"
    paths = [d["path"] for d in document["recipe"]["data"]["datasets"]]
    assert paths.count(str(Path("~/hermes").expanduser())) == 2, "train and test sources of one id"
    assert "HuggingFaceTB/Magpie-Pro-300K-Filtered-H4" in paths, "ids without an entry stay Hub ids"
    assert document["notices"][0] == (
        f"mirror: model.name_or_path: HuggingFaceTB/SmolLM-360M -> {tmp_path / 'models' / 'base'}"
        " (not found on this machine)"
    )
    assert document["notices"][-1] == (
        "mirror: 1 entry unused (no model, tokenizer or dataset this run loads): nobody/uses-this"
    )


def test_a_revision_entry_beats_the_plain_id_and_set_beats_both(tmp_path):
    mirrors = load_mirrors(
        _mirrors(
            tmp_path,
            "HuggingFaceTB/SmolLM3-3B-checkpoints: /any\nHuggingFaceTB/SmolLM3-3B-checkpoints@it-SFT: /it-sft\n",
        )
    )
    apo = resolve_recipe("dpo", "smollm3", mirrors=mirrors)
    assert (apo.recipe.model.name_or_path, apo.recipe.model.revision) == ("/it-sft", "main")
    assert apo.mirrored == {"HuggingFaceTB/SmolLM3-3B-checkpoints@it-SFT"}
    sft = resolve_recipe("sft", "smollm3", mirrors=mirrors)
    assert (sft.recipe.model.name_or_path, sft.recipe.model.revision) == ("/any", "main")
    pinned = resolve_recipe("sft", "smollm3", mirrors=mirrors, overrides=["model.name_or_path=/mine"])
    assert pinned.recipe.model.name_or_path == "/mine"


def test_mirrors_from_the_environment_and_the_flag_replacing_them(cli, tmp_path, monkeypatch):
    env_file = _mirrors(tmp_path, "mistralai/Mistral-7B-v0.1: /from-env\n")
    flag_file = tmp_path / "flag.yaml"
    flag_file.write_text("mistralai/Mistral-7B-v0.1: /from-flag\n")
    monkeypatch.setenv("ALIGNKIT_MIRRORS", str(env_file))
    from_env = json.loads(cli("sft", "--recipe", "zephyr-7b-beta", "--dry-run", "--json").stdout)
    assert from_env["recipe"]["model"]["name_or_path"] == "/from-env"
    assert resolve_recipe("sft", "zephyr-7b-beta").recipe.model.name_or_path == "/from-env"
    assert resolve_recipe("sft", "zephyr-7b-beta", mirrors={}).recipe.model.name_or_path == (
        "mistralai/Mistral-7B-v0.1"
    )
    flagged = cli("sft", "--recipe", "zephyr-7b-beta", "--mirror", flag_file, "--dry-run", "--json")
    assert json.loads(flagged.stdout)["recipe"]["model"]["name_or_path"] == "/from-flag"


def test_pipeline_mirrors_reach_every_stage_and_from_wins(cli, tmp_path):
    path = _mirrors(
        tmp_path,
        "mistralai/Mistral-7B-v0.1: /tiny\nalignment-handbook/zephyr-7b-sft-full: /published-sft\n"
        "HuggingFaceH4/ultrafeedback_binarized: /uf\n",
    )
    result = cli("run", "--recipe", "zephyr-7b-beta", "--mirror", path, "-o", tmp_path / "o", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [s["model"] for s in document["stages"]] == ["/tiny", str(tmp_path / "o" / "sft")]
    assert "dpo: mirror: data.datasets.0.path: HuggingFaceH4/ultrafeedback_binarized -> /uf" in " ".join(
        document["notices"]
    )
    # The dpo file's own model entry is replaced by the sft output, so this run does not use it.
    assert document["notices"][-1] == (
        "mirror: 1 entry unused (no model, tokenizer or dataset this run loads): alignment-handbook/zephyr-7b-sft-full"
    )
    assert not any("/published-sft" in notice for notice in document["notices"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "a mirror file is a non-empty YAML mapping of Hub ids to local paths"),
        ("{}\n", "a mirror file is a non-empty YAML mapping of Hub ids to local paths"),
        ("org/model: [a, b]\n", "org/model: must map to a local path (a string), found list: ['a', 'b']"),
        ("org/model:\n", "org/model: must map to a local path (a string), found NoneType: None"),
        ("'org/my model': /x\n", "org/my model: a mirror key must be a Hub id such as org/name"),
        ("org/model@: /x\n", "org/model@: give a model revision as ID@REVISION, both non-empty"),
        ("org/a: /x\norg/a: /y\n", "duplicate key 'org/a' (first given on line 1); keep only one"),
    ],
)
def test_malformed_mirror_files_exit_2(cli, tmp_path, text, message):
    path = _mirrors(tmp_path, text)
    result = cli("sft", "--recipe", "zephyr-7b-beta", "--mirror", path, "--dry-run")
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.startswith(f"error: {path}")
    with pytest.raises(UserError):
        load_mirrors(path)


def test_a_missing_mirror_file_names_the_flag_or_the_variable(cli, tmp_path, monkeypatch):
    missing = tmp_path / "nope.yaml"
    result = cli("run", "--recipe", "zephyr-7b-beta", "--mirror", missing, "--dry-run")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: --mirror {missing}: mirror file not found: {missing}"
    monkeypatch.setenv("ALIGNKIT_MIRRORS", str(missing))
    result = cli("sft", "--recipe", "zephyr-7b-beta", "--dry-run")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: ALIGNKIT_MIRRORS={missing}: mirror file not found: {missing}"
