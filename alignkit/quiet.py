"""Keeping the libraries quiet on the terminal, in one place, for every command that loads them.

A training run (alignkit.train.worker) and the data preview (`alignkit data`) call `quiet_libraries` before
they load anything. The terminal is kept for alignkit's own lines and for real errors: the libraries'
notices about their own internals (bitsandbytes' optional CPU kernels and its "publisher trust check", their
FutureWarnings about each other's deprecated arguments) and their progress bars are dropped. Library errors,
and warnings raised from alignkit's own code, still reach the terminal; a training run's other library logs
go to its alignkit.log (alignkit.train.worker.setup_logging).
"""

from __future__ import annotations

import logging
import os
import warnings

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
