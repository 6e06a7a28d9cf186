"""Recipes: the schema, reading and converting recipe files, overrides, and validation errors.

Nothing in this package imports torch, transformers or TRL, so `--help`, `recipes list` and `--dry-run`
stay fast.
"""
