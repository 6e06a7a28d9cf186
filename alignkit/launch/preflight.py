"""What a run checks before it loads weights or data rows, done the same way by `--dry-run` and by the run.

A dry run that says "valid" must not be followed by a run that refuses: `training.extra` keys (against the
method's TRL field list, which a test keeps equal to the installed TRL's, so no TRL import is needed), local
data files that cannot load, the recipe's chat template's Jinja syntax, and the output directory (a file, a
folder alignkit did not write, a finished run without --overwrite) are all judged here, with the messages
the run gives; so is what the method checks itself (`Method.preflight`). Running a model repository's own
code is announced here too. Light: no torch, no TRL.

One check depends on the machine rather than the recipe: a Liger kernel the recipe asks for must be
installed where the run trains. The dry run only notes its absence, since a recipe is often dry-run on
another machine than the one it is made for (every shipped SmolLM3 recipe asks for Liger).
"""

from __future__ import annotations

import importlib.util

from alignkit.errors import Problem, UserError
from alignkit.recipe.schema import RecipeBase

OWNED = frozenset(
    {
        "output_dir",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "lr_scheduler_type",
        "lr_scheduler_kwargs",
        "warmup_steps",
        "optim",
        "weight_decay",
        "max_grad_norm",
        "seed",
        "bf16",
        "fp16",
        "use_cpu",
        "gradient_checkpointing",
        "gradient_checkpointing_kwargs",
        "activation_checkpointing",
        "activation_checkpointing_kwargs",
        "eval_strategy",
        "eval_steps",
        "save_strategy",
        "save_steps",
        "save_total_limit",
        "report_to",
        "logging_steps",
        "run_name",
        "push_to_hub",
        "hub_model_id",
        "hub_private_repo",
        "hub_revision",
        "hub_strategy",
        "resume_from_checkpoint",
        "max_length",
        "beta",
        "loss_type",
        "model_init_kwargs",
        "trust_remote_code",
    }
)
"""TRL config fields alignkit sets from the recipe or the run; `training.extra` may not change them behind
its back (`trust_remote_code` among them: remote code runs only by `model.trust_remote_code`)."""


def preflight(resolved, *, overwrite: bool, dry_run: bool = False) -> list[str]:
    """Every check that needs no weights and no data rows; returns the notices to print before the run.

    Raises:
        UserError: listing every problem found.
    """
    from alignkit.launch.start import prepare_output_dir

    source = str(resolved.source)
    problems = extra_problems(resolved.recipe, source) + data_problems(resolved.recipe, source)
    problems += resolved.recipe.method.preflight(resolved.recipe, source)
    notices = remote_code_notices(resolved.recipe)
    machine = machine_problems(resolved.recipe, source)
    if dry_run:
        notices += [f"{problem}; a run on this machine refuses it" for problem in machine]
    else:
        problems += machine
    try:
        prepare_output_dir(resolved, overwrite=overwrite)
    except UserError as err:
        problems += err.problems
    if problems:
        raise UserError(problems)
    return notices


def check_extra(recipe: RecipeBase, source: str = "recipe") -> None:
    """Refuse `training.extra` keys the method's TRL config lacks or alignkit sets, an absent Liger, and what
    the method's own preflight finds (a reward function that does not import)."""
    problems = extra_problems(recipe, source) + machine_problems(recipe, source)
    problems += recipe.method.preflight(recipe, source)
    if problems:
        raise UserError(problems)


def extra_problems(recipe: RecipeBase, source: str) -> list[Problem]:
    """`training.extra` keys that are no field of the method's TRL config, or that alignkit sets itself."""
    problems = []
    method = recipe.method
    own = type(recipe.section).model_fields
    for key in recipe.training.extra:
        if key not in method.trl_fields:
            message = f"not a field of TRL's {method.name} config"
        elif key in own:
            message = f"a field of the recipe's {method.name} section: set {method.name}.{key} instead"
        elif key in OWNED:
            message = "alignkit sets this from the recipe; use the recipe's own field instead"
        else:
            continue
        problems.append(Problem(source=source, path=f"training.extra.{key}", message=message))
    return problems


def machine_problems(recipe: RecipeBase, source: str) -> list[Problem]:
    """What the recipe asks of this machine's installation that it lacks (a Liger kernel)."""
    if recipe.training.use_liger_kernel and importlib.util.find_spec("liger_kernel") is None:
        return [
            Problem(
                source=source,
                path="training.use_liger_kernel",
                message="liger-kernel is not installed; `pip install liger-kernel` or set it to false",
            )
        ]
    return []


def data_problems(recipe: RecipeBase, source: str) -> list[Problem]:
    """Local data sources that cannot load (judged by their paths) and a chat template that does not parse."""
    from alignkit.data.sources import check_local
    from alignkit.data.templates import template_syntax_error

    problems = []
    for index, dataset in enumerate(recipe.data.datasets):
        try:
            check_local(dataset, index)
        except UserError as err:
            problems += err.problems
    error = template_syntax_error(recipe) if recipe.method.data.chat_template else None
    if error is not None:
        problems.append(Problem(source=source, path="data.chat_template", message=error))
    return problems


def remote_code_notices(recipe: RecipeBase) -> list[str]:
    """Notices naming the code from the Hub that loading the model runs, when the recipe allows any."""
    model = recipe.model
    notices = []
    if model.trust_remote_code:
        repos = [model.name_or_path, *([model.tokenizer_name_or_path] if model.tokenizer_name_or_path else [])]
        named = " and ".join(dict.fromkeys(repos))
        notices.append(
            f"model.trust_remote_code is on: loading the model runs the Python code of {named} on this machine;"
            " turn it off unless the model needs it"
        )
    if model.use_kernels:
        notices.append(
            "model.use_kernels is on: on a GPU, transformers downloads layer kernels from the Hub and runs them;"
            " the machine must reach the Hub (or hold them in its cache)"
        )
    return notices
