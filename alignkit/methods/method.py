"""What a training method is to the rest of alignkit: the `Method` record each method module fills in.

Generic code (CLI, recipe models, handbook import, data layer, trainer factory, card, progress) asks a
`Method` for everything method-specific and never compares method names. A method module builds one
`Method` from its own section model, TRL mapping and data needs; `alignkit.methods.METHODS` lists them.
Plain data and functions: importing this module loads nothing heavy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

TEXT_ROWS = "text"
"""Prepared rows are raw text (`text`); the trainer tokenizes (and packs) them."""
TOKEN_ROWS = "tokens"
"""Prepared rows are token ids with a loss mask (`input_ids`, `assistant_masks`), cut to max_length."""
PAIR_ROWS = "pairs"
"""Prepared rows are rendered preference pairs (`prompt`, `chosen`, `rejected`); the trainer tokenizes."""
UNPAIRED_ROWS = "unpaired"
"""Prepared rows are rendered single completions with a desirability label (`prompt`, `completion`, `label`);
a preference pair becomes two rows, one desirable and one undesirable. The trainer tokenizes."""
PROMPT_ROWS = "prompts"
"""Prepared rows are prompts only (`prompt`, a message list) plus the source columns the method's `passthrough`
names, unchanged; an online trainer generates the completions and renders the chat template itself."""

RowKind = Literal["text", "tokens", "pairs", "unpaired", "prompts"]


def imported(module: str, name: str) -> Callable[[], type]:
    """A function that imports `module.name` when called: TRL's classes load only when a run needs them."""

    def load() -> type:
        return getattr(importlib.import_module(module), name)

    load.__qualname__ = f"imported({module}.{name})"
    return load


@dataclass(frozen=True)
class DataNeeds:
    """What a method reads from the data layer and in which shape its trainer wants the rows."""

    formats: tuple[str, ...]
    """Accepted data formats (names in `alignkit.data.formats`), in the order tried when several fit."""
    rows: RowKind
    """The shape of the prepared rows (TEXT_ROWS, TOKEN_ROWS, PAIR_ROWS, UNPAIRED_ROWS or PROMPT_ROWS)."""
    chat_template: bool = True
    """Whether rows are rendered with a chat template (raw-text methods need none)."""
    text_column_field: str | None = None
    prompt_column_field: str | None = None
    """For prompt-row methods: the section field naming a column to read prompts from instead (e.g. `problem`);
    when it is set, that column is the prompt whatever else the rows hold."""
    """For raw-text methods: the section field naming the text column (e.g. `text_column`)."""
    row_fields: tuple[str, ...] = ()
    """Section fields that change the prepared rows; a change misses the data cache, others do not."""
    loss_policy: Callable[[Any, Any], Any] | None = None
    """(section, tokenizer) -> masking.LossPolicy, for methods whose tokens alignkit masks itself."""
    trainer_adds_bos: Literal["on_encode", "unless_present"] = "on_encode"
    """How the trainer puts BOS before a prompt: as the tokenizer's encode does, or unless one is there."""
    too_long: Literal["cut", "dropped"] = "cut"
    """What the trainer does with a row longer than max_length: cuts it, or leaves it out (RewardTrainer)."""
    prompt_budget: Callable[[Any], int | None] = lambda section: None
    """(section) -> the most tokens a prompt row's rendered prompt may take (what the context leaves beside the
    completion), or None; a longer prompt is dropped and counted."""
    passthrough: Callable[[Any], Mapping[str, str]] = lambda section: {}
    """(section) -> {source column: the recipe field that reads it}: columns every source must have, carried into
    the prepared rows unchanged beside the method's own (what a reward function reads, such as a reference
    answer). A source without one is refused, naming the field; the columns are part of the data cache key."""


@dataclass(frozen=True)
class ModelNeeds:
    """Which kind of model a method trains; every method starts from a causal LM checkpoint (or an adapter).

    The defaults describe a causal language model. A method that trains something else on top of the same
    weights (a reward model: a sequence classifier with one output) names its transformers Auto class, the
    extra `from_pretrained` arguments, the LoRA task type and the new head that LoRA must train in full.
    """

    auto_class: str = "AutoModelForCausalLM"
    """The transformers Auto class that loads the model, and that loads the saved result."""
    init_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Extra `from_pretrained` arguments (e.g. num_labels=1)."""
    lora_task_type: str = "CAUSAL_LM"
    """peft's task type; an adapter of another type given as the model is merged into its base first."""
    head_modules: tuple[str, ...] = ("lm_head",)
    """The output head; under LoRA it is trained in full when new tokens or a new head need it."""
    new_head: bool = False
    """Whether the head starts untrained (not in the checkpoint), so LoRA always trains it in full."""
    generates: bool = True
    """Whether the model generates text; one that does not reads its output at the last non-pad token, so
    its config needs a pad token id (the end-of-sequence token when the tokenizer has no pad token)."""


@dataclass(frozen=True, eq=False)  # one object per method: compared and hashed by identity
class Method:
    """A training method: its recipe section, TRL mapping, data needs, trainer, card rows and metrics."""

    name: str
    """The subcommand and the recipe section key (`alignkit sft`, `sft:`)."""
    title: str
    """How the model card names it, e.g. "supervised fine-tuning (SFT)"."""
    section: type
    """The pydantic model of the method's recipe section."""
    default_learning_rate: float
    qlora_training: Mapping[str, Any]
    """learning_rate and batch shape `--qlora` sets for one GPU."""
    trl_fields: frozenset[str]
    """Field names of its TRL config class (checked against the installed TRL by a test)."""
    trl_config: Callable[[], type]
    """Imports and returns its TRL config class (lazily: TRL is heavy)."""
    trl_settings: Callable[[Any], dict[str, Any]]
    """The section mapped onto TRL config keyword arguments."""
    trainer: Callable[[], type]
    """Imports and returns its TRL trainer class."""
    data: DataNeeds
    card_rows: Callable[[Any], list[tuple[str, str]]] = lambda section: []
    """Rows the model card adds for the section (beta, loss, ...)."""
    defining_keys: frozenset[str] = frozenset()
    """Flat-config keys that say a config was written for this method (beta for dpo, ...)."""
    flat_key_reasons: Mapping[str, str] = field(default_factory=dict)
    """Why a renamed flat key changed name, where it differs for this method."""
    progress_metrics: tuple[str, ...] = ()
    """Logged metrics the progress line shows after loss, learning rate and grad norm."""
    curve_panels: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(panel title, logged keys) the training-curves PNG draws after loss and learning rate."""
    recipe_rules: Callable[[Any], None] = lambda recipe: None
    """Rules across the recipe's sections (the method's and the shared ones), run when a recipe is validated:
    raise ValueError tagged with the field's path (`alignkit.recipe.sections.at`) to refuse it."""
    tokenizer_setup: Callable[[Any, Any], None] = lambda section, tokenizer: None
    """(section, tokenizer) -> adjust the loaded tokenizer before data or model see it (rm: its pad token); the
    data preview and training both call it, so they tokenize alike and share the data cache."""
    data_notices: Callable[[Any, Any], list[str]] = lambda section, report: []
    """(section, DataReport) -> notices about the prepared data under the section's settings; computed on every
    run, so they follow the settings even when the prepared data comes from the cache."""
    model: ModelNeeds = ModelNeeds()
    """The kind of model it trains (a causal LM unless the method says otherwise)."""
    packs: Callable[[Any], bool] = lambda section: False
    """Whether the section's settings pack rows (then batches carry no padding to avoid by grouping)."""
    batch_length: Callable[[Mapping[str, Any]], Any] | None = None
    """The padded length each row of TRL's tokenized dataset takes in a batch, from the token counts of its
    columns (column name -> array of every row's count), where the rows have no `input_ids` to read it from
    (None: the `input_ids` counts)."""
    groups_by_length: bool = False
    """Whether batches of similar length can be sampled for this method (its trainer tolerates any order)."""
    splits_by_length: Callable[[Any], bool] | None = None
    """Set where grouping whole batches by length would change what the method learns (dpo: every step's
    gradient is clipped, so batches of short pairs would weigh as much as batches of long ones): whether the
    section's loss lets a random batch be split into micro-batches of similar length instead (the same steps,
    less padding), which a loss comparing rows across the batch does not."""
    text_lengths: Callable[[Any, Any], list[int]] | None = None
    """The padded length of each prepared row (a dataset slice of rendered text) under a tokenizer, before the
    trainer tokenizes: what decides, before the trainer is built, whether splitting batches pays."""
    fixed_order: Callable[[Any], str | None] = lambda section: None
    """Why the method's trainer must read the rows in dataset order under the section's settings (its
    `trl_settings` then set `train_sampling_strategy: sequential`), or None where any order is fine."""
    automatic: Callable[[Any, Any], list] = lambda section, facts: []
    """(section, automatic.Facts) -> automatic.Setting list for the method's own fields left unset."""
    trainer_arguments: Callable[[Any], dict[str, Any]] = lambda section: {}
    """(section) -> extra keyword arguments of the trainer's constructor (reward functions, ...); built when
    the trainer is, so what they load (a reward model) loads only then."""
    preflight: Callable[[Any, str], list] = lambda recipe, source: []
    """(recipe, source file) -> `alignkit.errors.Problem`s found before any weights or data rows load, beyond
    what recipe validation judges (something the machine must provide, such as an importable function)."""
    extras: Callable[[Any], tuple[str, ...]] = lambda section: ()
    """(section) -> alignkit's optional extras a run needs on a fresh machine (a dstack task installs them)."""
    inference_server: Callable[[Any], Any] = lambda recipe: None
    """(recipe) -> the `alignkit.launch.inference_server.InferenceServer` a job must start beside the trainers
    (vLLM in server mode), or None; Slurm and dstack jobs give it GPUs of its own and tell the run its address."""
    reference_model: Callable[[Any], bool] = lambda section: False
    """Whether full fine-tuning holds a frozen reference model beside the policy under the section's settings
    (the memory plan counts its weights); under LoRA the reference is the base with the adapters disabled."""
    qlora_batch: Callable[[Mapping[str, Any]], Mapping[str, Any]] = lambda section: {}
    """(the recipe's section as written) -> batch values `--qlora` sets over qlora_training's where the batch
    must fit the section's own settings (grpo: whole groups of completions), or none."""

    @property
    def sequences_per_row(self) -> int:
        """Sequences the trainer runs per training row: both halves of a preference pair go through the model."""
        return 2 if self.data.rows == PAIR_ROWS else 1

    @property
    def recipe(self) -> type:
        """The pydantic model of this method's recipes (its section joined with the shared ones)."""
        from alignkit.recipe.schema import recipe_model

        return recipe_model(self)
