"""Running one tool call under limits: a per-call timeout and a cap on the result's size.

A tool that raises, hangs or floods must cost the rollout one error observation, not the run.
Each call runs in its own daemon thread and the caller waits at most ``timeout_s``.

**What a timeout cannot do.** Python cannot kill a thread: a timed-out call keeps running in the
background until it returns by itself. It keeps its memory and its share of the GIL, and it may
still change the state of the environment that owns it after the model has been told it timed
out; environments whose checker reads that state (BFCL) say so in their verdicts. A call stuck
inside C code that holds the GIL (a huge ``10 ** 10 ** 9``) blocks every thread, the caller
included, until it finishes; only a process boundary would bound that, at the price of pickling
the tool state on every call. Daemon threads never keep the interpreter from exiting.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["ToolLimits", "ToolTimeout", "run_with_timeout", "cap"]


@dataclass(frozen=True)
class ToolLimits:
    """Per-call limits every environment applies to the tools it runs."""

    timeout_s: float | None = 10.0  # seconds one call may take; None runs calls inline (trusted tools only)
    max_chars: int = 16_384  # a result longer than this is cut (about 4k tokens of English or JSON)

    def __post_init__(self):
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"ToolLimits.timeout_s={self.timeout_s} must be > 0 (or None to run calls inline)")
        if self.max_chars < 1:
            raise ValueError(f"ToolLimits.max_chars={self.max_chars} must be >= 1")


class ToolTimeout(TimeoutError):
    """A tool call did not return within its limit (it may still be running; see the module doc)."""


def run_with_timeout(fn: Callable[[], Any], timeout_s: float | None) -> Any:
    """``fn()``'s value, or its exception re-raised, or :class:`ToolTimeout` after ``timeout_s``.

    ``timeout_s=None`` calls ``fn`` in this thread, for trusted tools: starting a thread per call
    dominates replaying thousands of quick ones (the BFCL oracle). With a
    timeout, a ``BaseException`` that is not an ``Exception`` (``SystemExit`` from a tool calling
    ``sys.exit``) comes back as a ``RuntimeError``: a tool must not stop the trainer.
    """
    if timeout_s is None:
        return fn()
    outcome: dict[str, Any] = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - reported to the caller, never lost in the thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name="tooln1-tool-call", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ToolTimeout(f"timed out after {timeout_s:g} s")
    if "error" in outcome:
        err = outcome["error"]
        if isinstance(err, Exception):
            raise err
        raise RuntimeError(f"tool raised {type(err).__name__}: {err}")
    return outcome["value"]


def cap(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters, with a note saying how much was left out."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n[truncated: {len(text) - max_chars} of {len(text)} characters left out]"
