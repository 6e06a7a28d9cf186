"""Launching: the launch plan (light, for `--dry-run`) and running it in-process or across processes."""
