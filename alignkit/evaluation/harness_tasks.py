"""The tasks of `alignkit eval`'s lm-evaluation-harness part: lm-eval task names and task YAML files, checked
before any weights load.

A task is an lm-eval task, group or tag name (`arc_easy`, `mmlu`), or the path of a task YAML file of your own
(`tasks/quiz.yaml`): one whose name ends in .yaml or .yml, or that holds a path separator. A YAML file's folder
joins lm-eval's task search path (that folder and all below it, as `lm-eval --include_path` searches), so a
group file may name the tasks beside it; `include:` is read relative to the including file. Local data files
are read as lm-eval reads them: a relative `data_files` path from the working directory.

`check_tasks` refuses lm-eval not installed, a YAML file, its includes or its local data files missing, and a
name lm-eval does not know (with the closest ones it knows). Judging a name needs lm-eval's TaskManager,
which indexes every task file lm-eval has (some 10,000 YAML files; 5.5 s on one CPU core of the machine the
tests run on): it is built once per call, and only when a name is to be judged. YAML files are read here
without lm-eval's private loader: a `!function` stays a string and nothing is imported.
"""

from __future__ import annotations

import difflib
import glob
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignkit.errors import Problem, either
from alignkit.quiet import held_output

INSTALL = "lm-eval (EleutherAI's lm-evaluation-harness) is not installed; `pip install 'alignkit[eval]'` installs it"
# Data files a datasets builder fetches itself: only local ones are checked.
_REMOTE = ("http://", "https://", "hf://", "s3://", "gs://")
_NO_TASK = "no task, group or tag lm-eval knows"


def check_tasks(tasks: list[str], *, source: str, where: str) -> list[Problem]:
    """What is wrong with `tasks`, found without loading any weights; `where` is the field that lists them.

    Each problem's path is `{where}.{index}`; lm-eval itself missing is one problem at `where`.
    """
    missing = lm_eval_problem()
    if missing is not None:
        return [Problem(source=source, path=where, message=missing)]
    with held_output("lm_eval"):
        return task_problems(tasks, source=source, where=where, manager=task_manager(tasks))


def lm_eval_problem() -> str | None:
    """Why lm-eval cannot be used here, or None."""
    if importlib.util.find_spec("lm_eval") is None:
        return INSTALL
    try:
        import lm_eval  # noqa: F401
    except Exception as err:  # installed, but one of its own imports fails
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        return f"lm-eval is installed but does not import ({lines[-1] if lines else type(err).__name__})"
    return None


def is_task_file(task: str) -> bool:
    """Whether a task as listed is the path of a YAML file rather than an lm-eval name."""
    return task.endswith((".yaml", ".yml")) or "/" in task or os.sep in task


def _include_paths(tasks: list[str]) -> list[str] | None:
    """The folders of the task YAML files among `tasks`, for lm-eval's task search path (None when none).

    lm-eval searches a folder and all below it: a folder inside another one listed is left out, or its files
    would be indexed twice (and each found twice would be reported as overriding itself).
    """
    files = [Path(task).expanduser().resolve() for task in tasks if is_task_file(task)]
    folders = sorted({file.parent for file in files if file.is_file()})
    kept = [folder for folder in folders if not any(other in folder.parents for other in folders)]
    return [str(folder) for folder in kept] or None


def task_manager(tasks: list[str], metadata: dict[str, Any] | None = None) -> Callable[[], Any]:
    """A maker of lm-eval's TaskManager over its own tasks and the folders of `tasks`' YAML files, which builds
    it on its first call only: building indexes every task file lm-eval has (seconds)."""
    made: list[Any] = []

    def manager():
        if not made:
            from lm_eval.tasks import TaskManager

            made.append(TaskManager(include_path=_include_paths(tasks), metadata=metadata))
        return made[0]

    return manager


def task_problems(tasks: list[str], *, source: str, where: str, manager: Callable[[], Any]) -> list[Problem]:
    """The problems with each task; `manager` makes lm-eval's TaskManager, called only when a name is judged."""
    problems = []
    for index, task in enumerate(tasks):
        at = f"{where}.{index}"
        if not is_task_file(task):
            hint = _unknown(task, manager())
            if hint is not None:
                problems.append(Problem(source=source, path=at, message=f"{task!r} is {_NO_TASK}; {hint}"))
            continue
        config, message = _read_task_file(task)
        if config is None:
            problems.append(Problem(source=source, path=at, message=message))
            continue
        messages = _data_file_problems(config)
        members = config.get("task") if "group" in config and isinstance(config.get("task"), list) else []
        for member in (m for m in members if isinstance(m, str)):
            hint = _unknown(member, manager())
            if hint is not None:
                messages.append(f"its group {config['group']!r} lists {member!r}, which is {_NO_TASK}; {hint}")
        problems += [Problem(source=source, path=at, message=m) for m in messages]
    return problems


def _unknown(name: str, manager) -> str | None:
    """None when lm-eval knows `name` as a task, group or tag; else a hint: the closest names it knows."""
    if name in manager.all_tasks:
        return None
    close = difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.6)
    return f"did you mean {either(close)}?" if close else "`lm-eval ls tasks` lists the names it knows"


def _read_task_file(task: str) -> tuple[dict[str, Any] | None, str]:
    """A task YAML file's config with its includes merged, or None and why it cannot be read."""
    import yaml

    path = Path(task).expanduser()
    if not path.exists():
        return None, f"no such task file: {task}; give an lm-eval task name or the path of a task YAML file"
    if not path.is_file() or path.suffix not in (".yaml", ".yml"):
        return None, f"{task} is not a task YAML file (.yaml or .yml)"
    try:
        config = _task_yaml(path.resolve(), ())
    except FileNotFoundError as err:
        return None, f"it includes {err.filename}, which does not exist (an include is read beside its file)"
    except (OSError, ValueError, yaml.YAMLError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        return None, f"cannot read it as a task: {lines[-1] if lines else type(err).__name__}"
    name = config.get("group", config.get("task"))
    if not isinstance(name, str):
        return None, "it names no task: give `task: NAME` (or `group: NAME` with its tasks under `task:`)"
    return config, ""


def _task_yaml(path: Path, including: tuple[Path, ...]) -> dict[str, Any]:
    """The mapping in a task YAML file, its `include:` files merged under it (its own keys win), as lm-eval merges
    them; a `!function` stays a string, as nothing is imported here."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    with path.open(encoding="utf-8") as stream:
        config = yaml.load(stream, Loader=Loader)  # a SafeLoader that reads `!function` as a string
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds no mapping of task settings")
    includes = config.pop("include", None) or []
    merged: dict[str, Any] = {}
    for include in includes if isinstance(includes, list) else [includes]:
        target = (path.parent / include).resolve()
        if target in (*including, path):
            raise ValueError(f"{path} includes itself through {include}")
        merged.update(_task_yaml(target, (*including, path)))
    return {**merged, **config}


def _data_file_problems(config: dict[str, Any]) -> list[str]:
    """The local data files a task config names that do not exist (remote ones are fetched when it runs)."""
    kwargs = config.get("dataset_kwargs")
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    if files is None:
        dataset = config.get("dataset_path")
        if isinstance(dataset, str) and dataset.startswith(("/", "./", "../", "~")):
            files = dataset  # a local dataset folder or file, which datasets would otherwise seek on the Hub
        else:
            return []
    named = files.values() if isinstance(files, dict) else [files]
    flat = [item for entry in named for item in (entry if isinstance(entry, list) else [entry])]
    missing = []
    for file in (f for f in flat if isinstance(f, str) and not f.startswith(_REMOTE)):
        pattern = os.path.expanduser(file)
        if glob.glob(pattern) if any(c in pattern for c in "*?[") else os.path.exists(pattern):
            continue
        # datasets reads a relative path from the working directory, not from the YAML file's folder
        relative = "" if os.path.isabs(pattern) else f" (read from the working directory, {os.getcwd()})"
        missing.append(f"its data file {file} does not exist{relative}")
    return missing
