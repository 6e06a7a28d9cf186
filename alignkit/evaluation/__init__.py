"""Evaluation of trained models: benchmark tasks run by EleutherAI's lm-evaluation-harness (`harness`), for
`alignkit eval`.
"""
