"""Errors alignkit reports to its users, and the exit code each one maps to.

A `UserError` is a mistake in what the user gave us (a recipe, an override, a path, data): the CLI prints
its problems one per line and exits 2, never with a traceback. A `RunError` is a failure while running
(exit 1): one summary line and where the full log is. An `Interrupted` run (Ctrl-C) exits 130, as shells
report a command ended by SIGINT.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_USER_ERROR = 2
EXIT_RUN_ERROR = 1
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input, located as precisely as we can."""

    source: str
    """Where the bad value came from: a file path, `--set a.b=v`, or a flag such as `--recipe`."""
    message: str
    """What is wrong and what is allowed instead."""
    path: str = ""
    """Dotted field path inside the source (`training.learning_rate`), empty when the whole source is wrong."""

    def __str__(self) -> str:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return f"{where}: {self.message}"


def either(names: list[str]) -> str:
    """Alternatives as a message says them: "a", "a or b", "a, b or c"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


class AlignkitError(Exception):
    """Base class of every error alignkit raises on purpose."""

    exit_code = EXIT_RUN_ERROR


class UserError(AlignkitError):
    """The user's input is wrong; carries every problem found, so all of them are reported at once."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, problems: list[Problem] | Problem | str, *, source: str = "alignkit"):
        if isinstance(problems, str):
            problems = [Problem(source=source, message=problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class RunError(AlignkitError):
    """Training or launching failed after the input was accepted."""

    exit_code = EXIT_RUN_ERROR


class Interrupted(RunError):
    """The user stopped the run (Ctrl-C); what was saved stays, so the same command resumes it."""

    exit_code = EXIT_INTERRUPTED
