"""The training methods alignkit offers, one module each; `METHODS` is the one list of them.

The CLI's commands, the recipe models, the handbook importer, `recipes list` and the tests' parametrisations
are all derived from `METHODS`. A new method is a module here that builds a `Method` (see `method.py`) named
`METHOD`, plus one `Listing` below: its name and what `--help` says of it. The listing is all the command
line needs to show a method, so `--help` and `recipes list` import no method module (their recipe sections
need pydantic); a method's module is imported the first time its `Method` is looked up.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from alignkit.methods.method import Method


@dataclass(frozen=True)
class Listing:
    """What the command line shows of a method before any of it is imported."""

    name: str
    """The subcommand, the recipe section key and the module's name (`alignkit.methods.<name>`)."""
    summary: str
    """One line for `--help`."""
    example: str
    """An example command for `alignkit <name> --help`."""


class MethodTable(Mapping[str, Method]):
    """Method name -> `Method`, in the listed order; a method's module is imported on first look-up."""

    def __init__(self, *listings: Listing):
        self._listings = {listing.name: listing for listing in listings}

    def __getitem__(self, name: str) -> Method:
        if name not in self._listings:
            raise KeyError(name)
        method = importlib.import_module(f"{__name__}.{name}").METHOD
        if method.name != name:
            raise RuntimeError(f"alignkit.methods.{name} defines the method {method.name!r}")
        return method

    def __contains__(self, name: object) -> bool:
        return name in self._listings  # Mapping's default would import the module to find out

    def __iter__(self) -> Iterator[str]:
        return iter(self._listings)

    def __len__(self) -> int:
        return len(self._listings)

    def listing(self, name: str) -> Listing:
        return self._listings[name]


METHODS = MethodTable(
    Listing(
        "cpt",
        "Continued pretraining on raw text (packed causal language modelling).",
        "alignkit cpt --recipe gpt2-nl",
    ),
    Listing(
        "sft",
        "Supervised fine-tuning on conversations or prompt/completion pairs.",
        "alignkit sft --recipe zephyr-7b-gemma --qlora",
    ),
    Listing(
        "dpo",
        "Direct Preference Optimization on chosen/rejected pairs (IPO, APO and other losses too).",
        "alignkit dpo --recipe zephyr-7b-gemma --set dpo.beta=0.1",
    ),
    Listing(
        "orpo",
        "Odds-Ratio Preference Optimization: SFT and preference in one step, no reference model.",
        "alignkit orpo --recipe zephyr-141b-a35b --dry-run",
    ),
    Listing(
        "simpo",
        "Simple Preference Optimization: length-normalised, reference-free preference loss with a margin.",
        "alignkit simpo --recipe zephyr-7b-beta --set simpo.simpo_gamma=1.2",
    ),
    Listing(
        "kto",
        "Kahneman-Tversky Optimization on completions labelled desirable or undesirable (pairs are split).",
        "alignkit kto --recipe pref-align-scan --set kto.beta=0.1",
    ),
    Listing(
        "rm",
        "Reward modelling: a one-output sequence classifier trained on chosen/rejected pairs (Bradley-Terry).",
        "alignkit rm --recipe zephyr-7b-beta",
    ),
    Listing(
        "grpo",
        "Group Relative Policy Optimization: online RL on prompts, completions rewarded by the recipe's scorers.",
        "alignkit grpo --recipe my-grpo.yaml --set grpo.num_generations=4",
    ),
    Listing(
        "rloo",
        "REINFORCE Leave-One-Out: online RL as grpo, each completion measured against its group's others.",
        "alignkit rloo --recipe my-rloo.yaml --set rloo.num_generations=4",
    ),
)


def known_method(name: str) -> str:
    """`name` when it is a method alignkit offers; a ValueError naming the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; one of {', '.join(METHODS)}")
    return name
