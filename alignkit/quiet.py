"""Keeping the libraries quiet on the terminal, in one place, for every command that loads them.

A training run (alignkit.train.worker) and the data preview (`alignkit data`) call `quiet_libraries` before
they load anything. The terminal is kept for alignkit's own lines and for real errors: the libraries'
notices about their own internals (bitsandbytes' optional CPU kernels and its "publisher trust check", their
FutureWarnings about each other's deprecated arguments) and their progress bars are dropped. Library errors,
and warnings raised from alignkit's own code, still reach the terminal; a training run's other library logs
go to its alignkit.log (alignkit.train.worker.setup_logging). A library that reports through its own log
and progress bars whatever happens (lm-eval, for `alignkit eval`) runs inside `held_output`, which shows
that output only when the library fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from alignkit.errors import AlignkitError

# Loggers that warn, at import, about optional kernels the user did not ask for and cannot act on.
_KERNEL_LOGGERS = ("bitsandbytes", "kernels")
# FutureWarnings that the libraries raise about one another's (or their own) deprecated arguments: they are
# addressed to the libraries' developers, not to someone running a recipe.
_LIBRARY_MODULES = r"(transformers|trl|peft|accelerate|datasets|huggingface_hub|bitsandbytes|kernels|deepspeed)(\.|$)"


def quiet_libraries() -> None:
    """Silence library chatter on the terminal for the rest of this process (idempotent)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in _KERNEL_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=_LIBRARY_MODULES)
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed warns at import that it found no GPU
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


@contextlib.contextmanager
def held_output(logger_name: str) -> Iterator[None]:
    """Hold the log of `logger_name` (INFO and up) and all that reaches stderr (progress bars, the programs the
    library runs) in a file; copy it to stderr only when the block fails with something other than an
    alignkit error (whose message says what to fix). Every write to stderr, from Python or not, is held."""
    handle, held_path = tempfile.mkstemp(prefix="alignkit-held-", suffix=".log")
    os.close(handle)
    logger = logging.getLogger(logger_name)
    level, propagate = logger.level, logger.propagate
    failed = False
    sys.stderr.flush()
    saved_fd = os.dup(2)
    # Appending, so the Python stream and the programs writing to the descriptor never overwrite each other.
    with open(held_path, "a", encoding="utf-8", errors="replace", buffering=1) as held:
        handler = logging.StreamHandler(held)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        descriptor = os.open(held_path, os.O_WRONLY | os.O_APPEND)
        os.dup2(descriptor, 2)
        os.close(descriptor)
        try:
            with contextlib.redirect_stderr(held):
                yield
        except Exception as err:
            failed = not isinstance(err, AlignkitError)
            raise
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
            held.flush()
            if failed:
                sys.stderr.write(Path(held_path).read_text(encoding="utf-8", errors="replace"))
            os.unlink(held_path)
