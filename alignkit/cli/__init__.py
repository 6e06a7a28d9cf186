"""The `alignkit` command line: one typer app (`app.py`), its shared options (`options.py`), and the commands
in modules named for what they do: `training` (one command per method, and `run`), `recipes`, `jobs` (slurm,
dstack), `diagnose` (data, env), `plan` (memory), `sampling` (sample) and `evaluation` (eval).

This package is the light layer: it imports typer, rich, pydantic and yaml, never torch, transformers, TRL,
datasets or accelerate (a test guards this), so `--help`, `recipes list` and `--dry-run` answer at once.
Each command imports the heavy stack it needs inside itself.
"""

from __future__ import annotations

from alignkit.cli import diagnose, evaluation, jobs, plan, sampling, training
from alignkit.cli.app import app
from alignkit.cli.recipes import recipes_app
from alignkit.methods import METHODS

app.add_typer(recipes_app, name="recipes")
for _name in METHODS:
    app.command(_name)(training.method_command(METHODS.listing(_name)))
app.command("sample")(sampling.sample)
app.command("eval")(evaluation.evaluate)
app.command("run")(training.run_stages)
app.command("env")(diagnose.env)
app.command("slurm")(jobs.slurm)
app.command("dstack")(jobs.dstack)
app.command("data")(diagnose.data)
app.command("plan")(plan.plan)


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
