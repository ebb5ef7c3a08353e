"""Evaluation prompts: the paper's prompt (docs/design.md §5) for every benchmark sample.

Samples are unified records, rendered by ``tooln1.data.prompt.render_prompt`` (preamble +
``# Tool`` block + reasoning instructions as the system message, then the turns). The record's
``system`` field is the preamble; benchmarks that bring their own system text (BFCL live
entries with a system message, ACEBench's current time) get it placed *before* the default
preamble by :func:`preamble_with`, so the tool block still follows the preamble directly.
"""
from __future__ import annotations

from typing import Any, Sequence

from tooln1.data.prompt import DEFAULT_PREAMBLE, render_prompt

__all__ = ["preamble_with", "render_prompts"]


def preamble_with(own_text: str) -> str:
    """The default xLAM preamble, preceded by a benchmark's own system text when there is one."""
    return f"{own_text.rstrip()}\n\n{DEFAULT_PREAMBLE}" if own_text and own_text.strip() else DEFAULT_PREAMBLE


def render_prompts(records: Sequence[dict[str, Any]], tokenizer: Any) -> list[str]:
    """Templated prompt strings (generation prompt appended) for ``records``."""
    return [render_prompt(r, tokenizer) for r in records]
