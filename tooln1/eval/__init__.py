"""Evaluation: BFCL v3 (official checker), API-Bank, ACEBench; result tables and charts.

Library entry point: :func:`tooln1.eval.runner.evaluate`; command line: ``tooln1-eval``.
Scoring is separate from generation (``runner.score_outputs``) so it can be tested with
injected responses.
"""
