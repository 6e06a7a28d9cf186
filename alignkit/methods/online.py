"""What the online RL methods (grpo, rloo) share: the policy generates groups of completions for prompts, the
recipe's rewards score them, and the trainer reinforces the better ones.

`OnlineSection` holds the shared recipe fields (generation, clipping, vLLM, rewards in the shape of
`sample.scorers`) and their rules; `Online` builds, for one method's section name, every hook of its `Method`
that does not depend on the algorithm: the TRL settings both configs take, the automatic vLLM decision, the
generation server a Slurm or dstack job starts, the extras, the prompt rows and the columns the rewards read,
the batch rule (whole groups), `--qlora`'s batch, the checks before weights load, and the card rows.

Generation runs with transformers in the trainer's own process, or with vLLM on CUDA (`vllm`): colocated on
the training GPUs, or on a separate `trl vllm-serve` whose address the recipe gives (`alignkit slurm` and
`alignkit dstack` reserve its GPUs and start it). Left to `auto`, vLLM colocates wherever it can run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from alignkit.data import formats
from alignkit.errors import Problem, either
from alignkit.methods.method import PROMPT_ROWS, DataNeeds, Method
from alignkit.recipe.bounds import TokenLength, within
from alignkit.recipe.sections import Section, at
from alignkit.scoring.specs import KINDS, ScorerList, check_scorers, labels, scorer_extras

# Where completions are generated: transformers in the trainer (off), vLLM on the training GPUs (colocate) or
# on a separate trl vllm-serve (server); auto: colocate where vLLM can run, else off.
VllmMode = Literal["auto", "off", "colocate", "server"]
COLOCATED_MEMORY, SERVER_MEMORY = 0.3, 0.9
"""The default share of a GPU vLLM takes beside the trainers (TRL's configs') and alone (trl vllm-serve's)."""
VLLM_PORT = 8000
"""The port `trl vllm-serve` listens on by default, and the one alignkit's Slurm and dstack jobs start it on."""
TOP_K_OFF = 0
"""TRL 1.16's top_k value that turns top-k filtering off."""

CURVE_PANELS = (
    ("reward", ("reward", "reward_std")),
    # TRL logs rewards/NAME/mean and rewards/NAME/std per reward function, NAME being the scorer's label.
    ("mean reward per function", ("rewards/*/mean",)),
    ("reward spread per function", ("rewards/*/std",)),
    ("completion length", ("completions/mean_length", "completions/min_length", "completions/max_length")),
    ("clipped completions", ("completions/clipped_ratio",)),
    ("KL to the reference", ("kl",)),
)
PROGRESS_METRICS = ("reward", "reward_std", "kl", "completions/mean_length")


class OnlineSection(Section):
    """Generate groups of completions per prompt, reward them, reinforce (the fields grpo and rloo share)."""

    num_generations: within(2, 65536) = 8
    """Completions generated per prompt (the group whose rewards are compared); at least 2."""
    max_completion_length: TokenLength = 256
    """Longest completion in tokens; a longer one is cut (and counted in completions/clipped_ratio)."""
    prompt_column: str | None = Field(None, min_length=1)
    """The column holding each prompt (a string becomes one user message, or a message list), such as `problem`;
    unset: a `prompt` column, or a conversation (messages, ShareGPT) minus its final assistant turn."""
    max_length: TokenLength | None = None
    """Longest prompt plus completion in tokens (vLLM's max_model_len): prompts longer than max_length -
    max_completion_length are dropped and counted. Unset: prompts are kept whole, as TRL does."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the generation."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: the smallest set of tokens whose probability reaches top_p; 1.0 keeps every token."""
    top_k: within(0, 2**31) = 0
    """Sample among the k most likely tokens only; 0 turns the filter off."""
    beta: float = Field(0.0, ge=0)
    """Weight of the KL penalty against the reference model; 0 loads no reference model."""
    epsilon: float = Field(0.2, gt=0)
    """Clipping range of the importance ratio (lower bound 1 - epsilon)."""
    epsilon_high: float | None = Field(None, gt=0)
    """Upper clipping bound 1 + epsilon_high (DAPO's clip-higher uses 0.28); unset: epsilon."""
    num_iterations: within(1, 1024) = 1
    """Optimisation passes over each generated batch (TRL's mu); above 1 the old policy's log-probs are kept."""
    mask_truncated_completions: bool = False
    """Leave completions cut at max_completion_length out of the loss (DAPO)."""
    vllm: VllmMode = "auto"
    """Generation with vLLM (CUDA, `pip install 'alignkit[vllm]'`): colocate shares the training GPUs; server
    talks to a separate `trl vllm-serve` at vllm_server; off generates with transformers; auto colocates where
    vLLM can run, else off. Where vLLM cannot run (no CUDA device, not installed), generation falls back to
    transformers and the run says so."""
    vllm_gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    """Fraction of each GPU vLLM may take; unset: 0.3 beside training under colocate (TRL's default), 0.9 of the
    server's own GPUs when alignkit's Slurm or dstack job starts it (trl vllm-serve's default)."""
    vllm_tensor_parallel_size: within(1, 1024) = 1
    """GPUs one vLLM engine spreads the model over (colocate: a divisor of the training processes; server: the
    GPUs alignkit's jobs give the server)."""
    vllm_sleep_mode: bool = False
    """colocate: vLLM releases its GPU memory while the policy trains, and takes it back to generate."""
    vllm_server: str | None = None
    """server: the address of the running `trl vllm-serve` (http://HOST:PORT); unset: http://localhost:8000.
    alignkit's Slurm and dstack jobs start the server and set it."""
    rewards: ScorerList = Field(default_factory=list)
    """How completions are rewarded, in the shape of `sample.scorers`: reward_model, exact_match, regex, python,
    math, think_format, overlong; each with an optional weight (TRL's reward_weights)."""

    @model_validator(mode="after")
    def _lengths_and_clipping(self) -> OnlineSection:
        if self.max_length is not None and self.max_completion_length >= self.max_length:
            raise ValueError(
                at(
                    "max_completion_length",
                    f"({self.max_completion_length}) leaves no room for a prompt within max_length"
                    f" ({self.max_length}): lower it, or raise max_length",
                )
            )
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(
                at(
                    "epsilon_high",
                    f"{self.epsilon_high:g} is below epsilon ({self.epsilon:g}); the upper clipping bound is at least"
                    " the lower one (unset it to use epsilon)",
                )
            )
        return self

    @field_validator("vllm", mode="before")
    @classmethod
    def _vllm_switch(cls, value: Any) -> Any:
        # YAML reads a bare `off` as false; TRL's use_vllm true means its default mode, colocate.
        return {False: "off", True: "colocate"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _vllm_settings(self) -> OnlineSection:
        if self.vllm_server is not None:
            if self.vllm not in ("auto", "server"):
                raise ValueError(
                    at(
                        "vllm_server",
                        f"is the address of a vLLM server, but vllm is {self.vllm}: set vllm: server to use it, or"
                        " remove vllm_server",
                    )
                )
            if not re.fullmatch(r"https?://[^\s/:]+(:\d+)?/?", self.vllm_server):
                raise ValueError(
                    at(
                        "vllm_server",
                        f"{self.vllm_server!r} is not a server address; write it as"
                        f" http://HOST:PORT (e.g. http://gpu-node-7:{VLLM_PORT})",
                    )
                )
        if self.vllm_sleep_mode and self.vllm == "server":
            raise ValueError(
                at("vllm_sleep_mode", "applies to vllm: colocate (a separate server keeps its memory); remove it")
            )
        return self


def memory_fraction(section: OnlineSection, mode: str) -> float:
    """The share of each of its GPUs vLLM takes in `mode`: little beside the trainers (colocate), most on its own
    (server)."""
    if section.vllm_gpu_memory_utilization is not None:
        return section.vllm_gpu_memory_utilization
    return COLOCATED_MEMORY if mode == "colocate" else SERVER_MEMORY


def server_address(section: OnlineSection) -> str:
    """The vLLM server's base URL, without a trailing slash."""
    return (section.vllm_server or f"http://localhost:{VLLM_PORT}").rstrip("/")


def reward_list(section: OnlineSection) -> str:
    names = labels(section.rewards)
    return ", ".join(
        name if spec.weight == 1 else f"{name} x {spec.weight:g}"
        for name, spec in zip(names, section.rewards, strict=True)
    )


@dataclass(frozen=True)
class Online:
    """The method hooks one online method shares with the others, for its section key `name` (grpo, rloo)."""

    name: str
    section: type[OnlineSection]

    def trl_settings(self, section: OnlineSection) -> dict[str, Any]:
        """The config keywords GRPOConfig and RLOOConfig share (the method adds its algorithm's own)."""
        return {
            "num_generations": section.num_generations,
            "max_completion_length": section.max_completion_length,
            "temperature": section.temperature,
            "top_p": section.top_p,
            "top_k": section.top_k if section.top_k else TOP_K_OFF,
            "beta": section.beta,
            "epsilon": section.epsilon,
            "epsilon_high": section.epsilon_high,
            "num_iterations": section.num_iterations,
            "mask_truncated_completions": section.mask_truncated_completions,
            "reward_weights": [float(spec.weight) for spec in section.rewards] or None,
            **self.vllm_settings(section),
        }

    def vllm_settings(self, section: OnlineSection) -> dict[str, Any]:
        """The config's vLLM keywords for a decided `vllm` (auto is decided by `automatic` before this)."""
        mode = section.vllm
        if mode == "off":
            return {"use_vllm": False}
        if mode == "colocate":
            return {
                "use_vllm": True,
                "vllm_mode": "colocate",
                "vllm_gpu_memory_utilization": memory_fraction(section, mode),
                "vllm_tensor_parallel_size": section.vllm_tensor_parallel_size,
                "vllm_enable_sleep_mode": section.vllm_sleep_mode,
                "vllm_max_model_length": section.max_length,
            }
        if mode == "server":
            return {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": server_address(section)}
        raise ValueError(
            f"{self.name}.vllm {mode!r} reached the TRL settings undecided; decide the automatic settings first"
        )

    def automatic(self, section: OnlineSection, facts) -> list:
        """Decide `vllm`: vLLM where it can run (CUDA and installed); transformers elsewhere, saying why."""
        from alignkit.recipe.automatic import Setting

        path, mode = f"{self.name}.vllm", section.vllm
        lacking = {"there is no CUDA device": facts.device != "cuda", "vllm is not installed": not facts.vllm}
        missing = [why for why, lacks in lacking.items() if lacks]
        if mode == "off":
            return [Setting(path, mode, "set in the recipe", automatic=False)]
        if missing:
            fallback = "generating with transformers in the training processes"
            asked = "" if mode == "auto" else f"the recipe asks for vllm {mode}, but "
            fix = "" if mode == "auto" else " (install it with `pip install 'alignkit[vllm]'` on a CUDA machine)"
            return [Setting(path, "off", f"{asked}{' and '.join(missing)}{fix}: {fallback}")]
        if mode == "auto" and section.vllm_server is not None:
            why = f"vllm is installed and vllm_server is set: generating on {server_address(section)}"
            return [Setting(path, "server", why)]
        if mode == "auto":
            share = memory_fraction(section, "colocate")
            why = f"vllm is installed and a CUDA device is present: vLLM generates on the training GPUs with {share:g}"
            return [Setting(path, "colocate", f"{why} of their memory")]
        return [Setting(path, mode, "set in the recipe", automatic=False)]

    def inference_server(self, recipe):
        """The `trl vllm-serve` a job starts for `vllm: server` when the recipe gives no address of its own."""
        from alignkit.adapters import adapter_base
        from alignkit.launch.inference_server import InferenceServer

        section, model = recipe.section, recipe.model
        if section.vllm != "server" or section.vllm_server is not None:
            return None
        # TRL merges a LoRA policy's adapters before sending the weights, so the server holds the base model.
        # Only a local folder is looked into: writing a job file asks the Hub nothing.
        local = Path(model.name_or_path).expanduser()
        base = adapter_base(str(local)) if local.is_dir() else None
        return InferenceServer(
            # As the recipe writes it: the server starts in the directory the trainers start in.
            model=base or model.name_or_path,
            revision="main" if base else model.revision,
            tensor_parallel_size=section.vllm_tensor_parallel_size,
            gpu_memory_utilization=memory_fraction(section, "server"),
            max_model_len=section.max_length,
            address_field=f"{self.name}.vllm_server",
            port=VLLM_PORT,
            parallel_field=f"{self.name}.vllm_tensor_parallel_size",
            without_server=f"set {self.name}.vllm: colocate (vLLM shares the training GPUs)",
        )

    @staticmethod
    def extras(section: OnlineSection) -> tuple[str, ...]:
        # auto leaves vLLM out: it colocates where the machine already has it, and falls back to transformers.
        return scorer_extras(section.rewards) + ("vllm",) * (section.vllm in ("colocate", "server"))

    @staticmethod
    def trainer_arguments(section: OnlineSection) -> dict[str, Any]:
        """The recipe's rewards as TRL reward functions, each named by its scorer's label (TRL logs it so)."""
        from alignkit.scoring.build import build_scorers
        from alignkit.scoring.trl_rewards import reward_functions

        return {"reward_funcs": reward_functions(build_scorers(section.rewards))}

    def data_needs(self) -> DataNeeds:
        """Prompt rows (the trainer generates and renders), with the columns the rewards read passed through."""
        return DataNeeds(
            formats=(formats.PROMPT, formats.MESSAGES, formats.SHAREGPT),
            rows=PROMPT_ROWS,
            row_fields=("prompt_column", "max_length", "max_completion_length"),
            prompt_column_field="prompt_column",
            prompt_budget=lambda section: section.max_length and section.max_length - section.max_completion_length,
            passthrough=self.passthrough,
        )

    def passthrough(self, section: OnlineSection) -> dict[str, str]:
        """The source columns the rewards read (a reference answer), each with the first reward reading it."""
        columns: dict[str, str] = {}
        for index, spec in enumerate(section.rewards):
            for column in sorted(spec.columns):
                columns.setdefault(column, f"{self.name}.rewards.{index}.{spec.kind}")
        return columns

    def batch_rule(self, recipe) -> None:
        """Refuse a batch that cannot hold whole groups, which the trainer refuses late (after the model loads)."""
        section, training = recipe.section, recipe.training
        batch = training.per_device_train_batch_size * training.gradient_accumulation_steps
        if batch % section.num_generations:
            groups = section.num_generations
            fits = -(-training.per_device_train_batch_size // groups) * groups
            raise ValueError(
                at(
                    f"{self.name}.num_generations",
                    f"is {groups}, but each process generates for training.per_device_train_batch_size x"
                    f" training.gradient_accumulation_steps = {training.per_device_train_batch_size} x"
                    f" {training.gradient_accumulation_steps} = {batch} completions at a time, which must hold whole"
                    f" groups: make that product a multiple of {groups} (e.g. per_device_train_batch_size {fits}),"
                    f" or set num_generations to a divisor of {batch}",
                )
            )

    def qlora_batch(self, section: dict[str, Any]) -> dict[str, Any]:
        """--qlora's one GPU generates one whole group per step: a batch of the recipe's num_generations (a value
        that is no whole number is left to validation to refuse)."""
        generations = section.get("num_generations", self.section.model_fields["num_generations"].default)
        if not isinstance(generations, int) or isinstance(generations, bool):
            return {}
        return {"per_device_train_batch_size": generations, "gradient_accumulation_steps": 1}

    def preflight(self, recipe, source: str) -> list[Problem]:
        """No rewards, or a reward that cannot work on this machine (a python function that does not import, a
        reward model that is no sequence classifier, math-verify missing), before any weights load."""
        rewards = recipe.section.rewards
        if not rewards:
            return [
                Problem(
                    source=source,
                    path=f"{self.name}.rewards",
                    message=f"give at least one reward ({either(list(KINDS))}), as in sample.scorers, such as"
                    " `- exact_match: answer`",
                )
            ]
        return check_scorers(rewards, None, where=f"{self.name}.rewards", source=source)

    def method(self, **own: Any) -> Method:
        """The method's `Method`: its own parts (`own`: name, title, TRL classes and settings, card rows, rules,
        defining keys) and every hook the online methods share."""
        shared = {
            # TRL's LoRA examples train online methods at 1e-5; one whole group per step on one GPU (qlora_batch
            # sizes the batch to the recipe's own group).
            "qlora_training": {
                "learning_rate": 1.0e-5,
                "per_device_train_batch_size": 8,
                "gradient_accumulation_steps": 1,
            },
            "qlora_batch": self.qlora_batch,
            "section": self.section,
            "data": self.data_needs(),
            "trainer_arguments": self.trainer_arguments,
            "preflight": self.preflight,
            "automatic": self.automatic,
            "extras": self.extras,
            "inference_server": self.inference_server,
            "progress_metrics": PROGRESS_METRICS,
            "curve_panels": CURVE_PANELS,
            # beta 0 loads no reference model; above 0 a frozen copy scores the KL term.
            "reference_model": lambda section: section.beta > 0,
        }
        return Method(**(shared | own))

    @staticmethod
    def card_rows(section: OnlineSection) -> list[tuple[str, str]]:
        clip = f"{section.epsilon:g}" + (f" / {section.epsilon_high:g}" if section.epsilon_high is not None else "")
        sampling = f"temperature {section.temperature:g}, top_p {section.top_p:g}, top_k {section.top_k or 'off'}"
        return [
            ("rewards", reward_list(section) or "none"),
            ("generations / max completion length", f"{section.num_generations} / {section.max_completion_length}"),
            ("beta / clipping", f"{section.beta:g} / {clip}"),
            ("sampling", sampling),
            ("generation", generation_row(section)),
        ]


def generation_row(section: OnlineSection) -> str:
    mode = section.vllm
    if mode == "colocate":
        return f"vLLM on the training GPUs ({memory_fraction(section, mode):g} of their memory)"
    if mode == "server":
        return f"vLLM server at {server_address(section)}"
    return "transformers in the training processes" if mode == "off" else "vLLM where it can run, else transformers"
