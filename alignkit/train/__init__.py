"""The training engine: a frozen recipe in, a trained, reloadable, documented model out.

`worker` is the entry point every process runs; `factory` turns a recipe into a TRL trainer (config first,
then tokenizer, model and data); `modeling` loads models and adapters; `finalize` writes what a finished
run leaves behind. Everything here imports the heavy stack; the CLI reaches it only when training.
"""
