"""The offline demo: a tiny Llama and tokenizer built locally, and a synthetic task whose answers can be checked."""
