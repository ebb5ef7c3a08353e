"""The unit every benchmark hands to the runner: a prompt record plus what its checker needs.

Keeping prompts (``record``, the project's unified record, docs/design.md §6) and checking data
(``target``) side by side lets generation and scoring run separately: the runner renders and
generates from ``record``; the benchmark module scores a response against ``target``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["EvalSample", "Verdict"]


@dataclasses.dataclass
class EvalSample:
    """One benchmark item.

    benchmark: "bfcl" | "apibank" | "acebench"; category: the benchmark's sub-set name;
    id: the benchmark's own id; record: ``{id, source, system, tools, conversation, answer}``;
    target: benchmark-specific ground truth for the checker (opaque to the runner).
    """

    benchmark: str
    category: str
    id: str
    record: dict[str, Any]
    target: Any


@dataclasses.dataclass
class Verdict:
    """Result of checking one response: ``valid`` plus why not, and what was decoded.

    ``unparseable``: the response was neither a call list nor a clean text answer
    (:func:`tooln1.eval.parsing.classify_response`); such a response is never valid.
    """

    valid: bool
    error_type: str = ""
    error: Any = None
    decoded: Any = None
    unparseable: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
