"""Recipe pipelines: the stages of a recipe family in order, each starting from the previous one's output.

A family declares its stages in `configs/recipes/<name>/pipeline.yaml`:

    stages:
      - name: sft
        method: sft
      - name: dpo
        method: dpo
        from: sft          # model.name_or_path <- the sft stage's output_dir

A stage is any stage kind (alignkit.stages): a training method, or `sample`, which makes data. Wiring
beyond `from`: `data: STAGE` makes a sample stage's selected rows the stage's first data source, and
`inputs: {FIELD: STAGE}` sets any field to an earlier stage's output folder (a sample stage's reward-model
scorer: `sample.scorers.0.reward_model: rm`). A block repeats for N rounds (iterative DPO):

      - repeat: 3
        start: {dpo: sft}  # in round 1, `dpo` (the newest policy) means the sft stage
        stages:
          - {name: sample, method: sample, from: dpo}
          - {name: dpo, method: dpo, from: dpo, data: sample}

Round r's stages are named `sample-r`, `dpo-r`. Inside the block, a name that comes earlier in the block
means this round's stage, the stage's own name or a later one the previous round's (in round 1 the `start`
stage); after the block, a block stage's name means its last round.

A stage runs the family's recipe file for its method. Run under a variant name (`zephyr-7b-beta:qlora`), a
stage takes the variant's file when the variant has one for its method and the base recipe's otherwise; a
stage with `recipe:` is pinned to that registry name whatever the run's name (SmolLM3's two SFT stages).
A recipe folder of the user's (`alignkit recipes cp NAME DIR/`) runs the same way from its own
pipeline.yaml: each stage takes the folder's `<method>.yaml`, and a pinned stage the folder's copy of its
recipe's file (`<method>.<variant>.yaml` for NAME:VARIANT) when the folder has one.

Overrides are `PATH=VALUE` for every stage, or `STAGE:PATH=VALUE` for one. A global override of a method
section (`dpo.beta=0.1`) reaches only the stages of that method. They apply in a fixed order: global
overrides, then the `from` wiring (so `--set model.name_or_path=tiny` swaps the first model only, and later
stages still start from the stage before), then stage overrides (so `dpo:model.name_or_path=X` wins).

A stage is finished when its output_dir holds a finished run (alignkit.run_record.is_finished: the run file,
written last by a run that saved everything, says so), so a rerun resumes at the first unfinished stage.
This module only plans: it resolves and validates every stage up front, loads nothing and starts nothing.
Light: no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from alignkit.errors import Problem, UserError
from alignkit.library import registry
from alignkit.library.lookup import find_entry, recipe_folder
from alignkit.recipe.resolve import ResolvedRecipe, resolve_recipe
from alignkit.recipe.yamlio import read_yaml_mapping
from alignkit.run_record import is_finished
from alignkit.stages import STAGE_KINDS, data_output, is_training, known_stage, models_read, takes_model

PIPELINE_FILE = "pipeline.yaml"


class StageSpec(BaseModel):
    """One stage of a pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    method: str
    """The stage kind: a training method or sample."""
    recipe: str | None = None
    """Registry name this stage always runs; unset: the run's recipe (or its family's base recipe)."""
    from_stage: str | None = Field(None, alias="from")
    """An earlier training stage whose output_dir becomes this stage's model.name_or_path."""
    data_stage: str | None = Field(None, alias="data")
    """An earlier sample stage whose selected rows become this stage's first data source."""
    inputs: dict[str, str] = Field(default_factory=dict)
    """Recipe field path -> an earlier stage whose output_dir the field takes."""
    overrides: list[str] = Field(default_factory=list, alias="set")
    """`PATH=VALUE` overrides of this stage's recipe (the command line's `--set STAGE:...` come after); in a
    repeated block `{round}` stands for the round's number (a prompt set per round)."""

    _known_method = field_validator("method")(known_stage)
    _round: int | None = PrivateAttr(None)
    """The round of a repeated block this stage belongs to (set by the expansion)."""

    @property
    def sources(self) -> list[str]:
        """Every stage this one reads from."""
        found = [self.from_stage, self.data_stage, *self.inputs.values()]
        return [name for name in found if name is not None]


class RepeatSpec(BaseModel):
    """A block of stages run for several rounds, each round from the previous one's outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repeat: int = Field(ge=1, le=1000)
    start: dict[str, str | None] = Field(default_factory=dict)
    """Block stage name -> the earlier stage that stands in for it in round 1; null: in round 1 the stage reads
    its recipe's own value (the model or data the recipe file names)."""
    stages: list[StageSpec] = Field(min_length=1)

    def rounds(self, latest: dict[str, str]) -> list[StageSpec]:
        """The block's stages for every round, references renamed; `latest` maps names to their newest stage."""
        names = [stage.name for stage in self.stages]
        out = []
        for round_ in range(1, self.repeat + 1):
            for position, stage in enumerate(self.stages):

                def ref(name: str | None, position=position, round_=round_, stage=stage) -> str | None:
                    if name is None or name not in names:
                        return latest.get(name, name) if name is not None else None
                    if names.index(name) < position:
                        return f"{name}-{round_}"
                    if round_ > 1:
                        return f"{name}-{round_ - 1}"
                    if name not in self.start:
                        raise ValueError(
                            f"in round 1, stage {stage.name!r} reads {name!r}, which has not run yet; add"
                            f" start: {{{name}: STAGE}} naming the earlier stage that stands in for it"
                        )
                    stand_in = self.start[name]
                    return None if stand_in is None else latest.get(stand_in, stand_in)

                inputs = {field: ref(source) for field, source in stage.inputs.items()}
                update = {
                    "name": f"{stage.name}-{round_}",
                    "overrides": [text.replace("{round}", str(round_)) for text in stage.overrides],
                    "from_stage": ref(stage.from_stage),
                    "data_stage": ref(stage.data_stage),
                    "inputs": {field: source for field, source in inputs.items() if source is not None},
                }
                copy = stage.model_copy(update=update)
                copy._round = round_
                out.append(copy)
        return out


def _after_blocks(stage: StageSpec, latest: dict[str, str]) -> StageSpec:
    """A stage outside any block, its references to a repeated stage renamed to that stage's last round."""
    if not latest:
        return stage

    def ref(name: str | None) -> str | None:
        return None if name is None else latest.get(name, name)

    inputs = {field: ref(source) for field, source in stage.inputs.items()}
    return stage.model_copy(
        update={"from_stage": ref(stage.from_stage), "data_stage": ref(stage.data_stage), "inputs": inputs}
    )


def _item_kind(item: Any) -> str:
    """A pipeline item is a repeated block when it has `repeat`, else a stage."""
    return "repeat" if isinstance(item, RepeatSpec) or (isinstance(item, dict) and "repeat" in item) else "stage"


_ITEM = Discriminator(_item_kind)


class PipelineSpec(BaseModel):
    """A family's stages, in the order they run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    stages: list[Annotated[Annotated[StageSpec, Tag("stage")] | Annotated[RepeatSpec, Tag("repeat")], _ITEM]] = Field(
        min_length=1
    )

    @property
    def flat(self) -> list[StageSpec]:
        """Every stage in run order, repeated blocks expanded into their rounds."""
        latest: dict[str, str] = {}
        out: list[StageSpec] = []
        for item in self.stages:
            expanded = [_after_blocks(item, latest)] if isinstance(item, StageSpec) else item.rounds(latest)
            for stage in expanded:
                latest[stage.name.rsplit("-", 1)[0] if isinstance(item, RepeatSpec) else stage.name] = stage.name
            out += expanded
        return out

    @model_validator(mode="after")
    def _stage_graph(self) -> PipelineSpec:
        kinds: dict[str, str] = {}
        for stage in self.flat:
            if stage.name in kinds:
                raise ValueError(f"stage name {stage.name!r} is used twice")
            for role, source in (("starts from", stage.from_stage), ("reads data from", stage.data_stage)):
                if source is not None and source not in kinds:
                    raise ValueError(f"stage {stage.name!r} {role} {source!r}, which is not an earlier stage")
            for field, source in stage.inputs.items():
                if source not in kinds:
                    raise ValueError(
                        f"stage {stage.name!r} sets {field} from {source!r}, which is not an earlier stage"
                    )
            if stage.from_stage is not None and not is_training(kinds[stage.from_stage]):
                raise ValueError(
                    f"stage {stage.name!r} starts from {stage.from_stage!r}, a {kinds[stage.from_stage]} stage, which"
                    " makes data, not a model; read its rows with data: instead"
                )
            if stage.data_stage is not None and data_output(kinds[stage.data_stage]) is None:
                kind = kinds[stage.data_stage]
                what = (
                    "a model, not data; start from it with from: instead"
                    if is_training(kind)
                    else "no training rows; read rows from a stage that makes them, such as sample"
                )
                raise ValueError(
                    f"stage {stage.name!r} reads data from {stage.data_stage!r}, a {kind} stage, which makes {what}"
                )
            if stage.from_stage is not None and not takes_model(stage.method):
                raise ValueError(
                    f"stage {stage.name!r} is a {stage.method} stage, which names its models itself; point them at"
                    " earlier stages with inputs: {FIELD: STAGE} (such as eval.models.1.path: STAGE) instead of from:"
                )
            kinds[stage.name] = stage.method
        return self


@dataclass(frozen=True)
class PlannedStage:
    """A stage resolved into a validated recipe, with where it writes and whether it is done."""

    name: str
    method: str
    recipe_name: str
    resolved: ResolvedRecipe
    from_stage: str | None
    finished: bool
    sources: tuple[str, ...] = ()
    """Every earlier stage this one reads (its model, data or another input)."""
    settings: tuple[str, ...] = ()
    """The overrides that make a scan point what it is (empty for a pipeline stage)."""
    command: str = ""
    """The stand-alone `alignkit <method>` command of a scan point (empty for a pipeline stage)."""

    @property
    def output_dir(self) -> Path:
        return Path(self.resolved.recipe.training.output_dir or "")

    @property
    def model(self) -> str:
        return models_read(self.method, self.resolved.recipe)


def family(name: str) -> str:
    """The family (folder) of a registry name: `zephyr-7b-beta:qlora` -> `zephyr-7b-beta`."""
    return name.split(":", 1)[0]


def pipeline_file(name: str) -> Path:
    folder = recipe_folder(name)
    return (folder if folder is not None else registry.configs_dir() / "recipes" / family(name)) / PIPELINE_FILE


def has_pipeline(name: str) -> bool:
    return pipeline_file(name).is_file()


def load_pipeline(name: str) -> PipelineSpec:
    """Read and validate the pipeline of a recipe family.

    Raises:
        UserError: no such family, no pipeline.yaml, or a malformed one.
    """
    methods = find_entry(name).methods
    path = pipeline_file(name)
    if not path.is_file():
        raise UserError(
            Problem(
                source="--recipe",
                message=f"recipe {name!r} has no pipeline ({PIPELINE_FILE}); run its stage directly:"
                f" `alignkit {methods[0]} --recipe {name}`{_scan_hint(name)}",
            )
        )
    try:
        return PipelineSpec.model_validate(read_yaml_mapping(path))
    except ValidationError as err:
        raise UserError(
            [Problem(source=str(path), path=".".join(str(p) for p in e["loc"]), message=e["msg"]) for e in err.errors()]
        ) from None


def _scan_hint(name: str) -> str:
    # Imported here: the scan module plans its points as this module's PlannedStage.
    from alignkit.pipeline.scan import SCAN_SUFFIX, scan_file

    scan = family(name) + SCAN_SUFFIX
    return f", or its scan: `alignkit run --recipe {scan}`" if scan_file(name).is_file() else ""


def stage_recipe(stage: StageSpec, name: str) -> str:
    """The registry name (or recipe folder or file) a stage runs when the pipeline is run as `name`."""
    folder = recipe_folder(name)
    if folder is not None:
        if stage.recipe is None:
            return name
        variant = stage.recipe.partition(":")[2]
        copied = folder / (f"{stage.method}.{variant}.yaml" if variant else f"{stage.method}.yaml")
        return str(copied) if copied.is_file() else stage.recipe
    if stage.recipe is not None:
        return stage.recipe
    entries = registry.discover()
    if name in entries and stage.method in entries[name].files:
        return name
    return family(name)


def plan_pipeline(
    name: str,
    *,
    qlora: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
    output_root: str | Path | None = None,
    mirrors: dict[str, str] | None = None,
) -> list[PlannedStage]:
    """Resolve every stage of `name`'s pipeline, wire each `from` to the earlier stage's output, mark finished.

    With `output_root`, stage S writes to `output_root/S`; otherwise each stage keeps its recipe's own
    output_dir (by default outputs/<recipe>-<method>, the folder a stand-alone run of that stage uses, so
    stages run by hand count as finished), except a base-recipe stage run under a variant name, which writes
    to outputs/<variant name>-<method> so it never mistakes the base pipeline's run for its own, a stage named
    other than its method (sft-bon), which writes to outputs/<recipe>-<stage>, and a repeated stage, which
    writes to its recipe's folder with `-<round>` added. Two stages left with one folder are refused. `mirrors`
    (Hub id -> local path) reaches every stage's own file, before the `from` wiring; None reads
    ALIGNKIT_MIRRORS.

    Raises:
        UserError: a bad pipeline, an override for an unknown stage, or any stage's recipe problems.
    """
    stages = load_pipeline(name).flat
    global_sets, stage_sets = _split_overrides(overrides, _override_names(stages))
    planned: dict[str, PlannedStage] = {}
    for stage in stages:
        recipe_name = stage_recipe(stage, name)
        # Global overrides, then the wiring, then the pipeline's own `set:`, then the folder, then the command
        # line's STAGE: overrides (a repeated stage's block name's `dpo:` before its round's `dpo-2:`), so an
        # explicit `STAGE:training.output_dir=...` or `STAGE:model...` wins.
        sets = [o for o in global_sets if _applies(o, stage.method)] + _wiring(stage, planned) + stage.overrides
        if output_root is not None:
            sets.append(f"training.output_dir={Path(output_root) / stage.name}")
        elif recipe_name != name and stage.recipe is None:
            # The base recipe's stage run under a variant: its default folder would be the base pipeline's.
            sets.append(f"training.output_dir=outputs/{name.replace(':', '-')}-{stage.method}")
        given = stage_sets.get(stage.name.rsplit("-", 1)[0], []) if stage._round is not None else []
        given += stage_sets.get(stage.name, [])
        resolved = resolve_recipe(stage.method, recipe_name, qlora=qlora, overrides=sets + given, mirrors=mirrors)
        folder = None if output_root is not None or _sets_folder(given) else _own_folder(stage, resolved)
        if folder is not None:
            sets.append(f"training.output_dir={folder}")
            resolved = resolve_recipe(stage.method, recipe_name, qlora=qlora, overrides=sets + given, mirrors=mirrors)
        planned[stage.name] = PlannedStage(
            name=stage.name,
            method=stage.method,
            recipe_name=recipe_name,
            resolved=resolved,
            from_stage=stage.from_stage,
            finished=is_finished(resolved.recipe.training.output_dir or ""),
            sources=tuple(stage.sources),
        )
    _refuse_shared_folders(list(planned.values()))
    return list(planned.values())


def _own_folder(stage: StageSpec, resolved: ResolvedRecipe) -> str | None:
    """A folder of its own for a stage that would share its recipe's: a repeated stage's round (`-2` added),
    or a second stage of one method (sft-bon beside sft) left with the default `outputs/<recipe>-<method>`."""
    if stage._round is not None:
        return f"{resolved.output_dir}-{stage._round}"
    default = Path("outputs") / f"{resolved.name.replace(':', '-')}-{stage.method}"
    if stage.name != stage.method and stage.recipe is None and resolved.output_dir == default:
        return str(default.with_name(f"{resolved.name.replace(':', '-')}-{stage.name}"))
    return None


def _sets_folder(texts: list[str]) -> bool:
    return any(text.partition("=")[0].strip() == "training.output_dir" for text in texts)


def _refuse_shared_folders(stages: list[PlannedStage]) -> None:
    """Two stages writing one folder would each find the other's run there: refuse, naming the fix."""
    first: dict[Path, str] = {}
    problems = []
    for stage in stages:
        folder = stage.output_dir.expanduser().resolve()
        if folder in first:
            problems.append(
                Problem(
                    source=str(stage.output_dir),
                    message=f"stages {first[folder]} and {stage.name} would both write here; give one of them its"
                    f" own folder (--set {stage.name}:training.output_dir=DIR, or --output-dir ROOT for one folder"
                    " per stage)",
                )
            )
        first.setdefault(folder, stage.name)
    if problems:
        raise UserError(problems)


def _wiring(stage: StageSpec, planned: dict[str, PlannedStage]) -> list[str]:
    """The overrides that connect a stage to the earlier stages it reads."""
    sets = []
    if stage.from_stage is not None:
        # A local folder has no revision; the recipe's (a Hub branch of the published model) must go.
        sets += [f"model.name_or_path={planned[stage.from_stage].output_dir}", "model.revision=main"]
    if stage.data_stage is not None:
        source = planned[stage.data_stage]
        rows = data_output(source.method, source.output_dir)
        sets.append(f"data.datasets.0={json.dumps({'path': str(rows), 'split': 'train'})}")
    for field, name in stage.inputs.items():
        sets.append(f"{field}={json.dumps(str(planned[name].output_dir))}")
    return sets


def _override_names(stages: list[StageSpec]) -> list[str]:
    """The stage names a `STAGE:` override may give: every stage, and each repeated block's stage names."""
    names = [stage.name for stage in stages]
    return names + list(dict.fromkeys(s.name.rsplit("-", 1)[0] for s in stages if s._round is not None))


def next_stage(plan: list[PlannedStage]) -> PlannedStage | None:
    """The first stage not finished (where a rerun resumes), or None when all are."""
    return next((stage for stage in plan if not stage.finished), None)


def _split_overrides(texts: list[str] | tuple[str, ...], stages: list[str]) -> tuple[list[str], dict[str, list]]:
    global_sets: list[str] = []
    stage_sets: dict[str, list[str]] = {}
    problems = []
    for text in texts:
        key, eq, value = text.partition("=")
        stage, colon, path = key.partition(":")
        if not colon:
            global_sets.append(text)
        elif stage in stages:
            stage_sets.setdefault(stage, []).append(f"{path}{eq}{value}")
        else:
            problems.append(
                Problem(
                    source=f"--set {text}", message=f"no stage {stage!r} in this pipeline; stages: {', '.join(stages)}"
                )
            )
    if problems:
        raise UserError(problems)
    return global_sets, stage_sets


def _applies(text: str, method: str) -> bool:
    section = text.partition("=")[0].strip().split(".", 1)[0]
    return section not in STAGE_KINDS or section == method


def describe(plan: list[PlannedStage]) -> list[dict[str, Any]]:
    """A JSON-ready summary of a plan, one entry per stage."""
    return [
        {
            "stage": s.name,
            "method": s.method,
            "recipe": s.recipe_name,
            "model": s.model,
            "from": s.from_stage,
            "reads": list(s.sources),
            "output_dir": str(s.output_dir),
            "finished": s.finished,
        }
        for s in plan
    ]
