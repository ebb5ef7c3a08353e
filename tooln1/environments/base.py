"""The environment interface: what a rollout needs from a task that answers the model's calls.

An environment is made per rollout from a data record (:func:`make_environment`), so the G
samples of one prompt never share state. The engine renders :meth:`Environment.messages` once
into the prompt, samples a reply, hands its decoded text to :meth:`Environment.step` and, while the
episode is not done, appends the observation as a user turn and continues the same sample.

**Observation format.** ``Step.observation`` is the body of the next user turn. After tool calls
it is one ``<tool_response>`` block per call (:func:`tool_responses`); rendered as a user message
by Qwen2.5's chat template it gives the same bytes the template gives for consecutive ``tool``
messages, which is how :meth:`Environment.messages` records them. When a user turn of the task
follows instead (BFCL's next question), the observation is that question's text. So the text
appended after a reply is always ``<|im_end|>\\n<|im_start|>user\\n`` + observation +
``<|im_end|>\\n<|im_start|>assistant\\n``, and the conversation never needs re-templating.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

__all__ = ["Step", "Environment", "KINDS", "make_environment", "tool_responses", "has_think"]


@dataclass(frozen=True)
class Step:
    """What the environment answers to one assistant turn."""

    observation: str  # text the environment answers with (tool results); "" when done
    done: bool
    reward: float | None = None  # optional per-turn reward


@runtime_checkable
class Environment(Protocol):
    """One episode of a task; made per rollout, never shared between samples."""

    def tools(self) -> list[dict]:
        """JSON schemas of the tools the model may call now (shown in the prompt); read-only."""
        ...

    def messages(self) -> list[dict]:
        """The conversation so far (system, user, assistant, tool messages) the prompt is built from."""
        ...

    def step(self, response: str) -> Step:
        """Execute the calls of one assistant turn (its decoded text) and answer."""
        ...

    def reward(self) -> float:
        """Trajectory-level reward; an episode cut before it is done scores as a failed one."""
        ...


KINDS = {
    "single_turn": "tooln1.environments.single_turn:SingleTurnEnvironment",
    "bfcl_multi_turn": "tooln1.environments.bfcl:BFCLEnvironment",
    "lookup": "tooln1.environments.lookup:LookupEnvironment",
    "toolace_replay": "tooln1.environments.replay:ReplayEnvironment",
}
"""Record kind (a record's ``env`` field; none means ``single_turn``) → its environment class."""


def make_environment(record: dict, **options: Any) -> Environment:
    """A fresh environment for one rollout of ``record``, chosen by ``record["env"]``.

    ``options`` go to the class's ``from_record`` (e.g. ``limits=ToolLimits(...)``,
    ``reward_kind="binary"`` for single-turn records, ``require_think=True`` for BFCL).
    """
    kind = record.get("env", "single_turn")
    if kind not in KINDS:
        raise ValueError(f"record {record.get('id')!r}: unknown environment kind {kind!r}; "
                         f"known kinds: {sorted(KINDS)}")
    module, name = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name).from_record(record, **options)


def tool_responses(results: Sequence[str]) -> str:
    """The user-turn body for one turn's tool results: one ``<tool_response>`` block each.

    Byte-identical to what Qwen2.5's template writes between ``<|im_start|>user\\n`` and
    ``<|im_end|>`` for consecutive ``tool`` messages holding ``results``.
    """
    return "\n".join(f"<tool_response>\n{text}\n</tool_response>" for text in results)


def has_think(response: str) -> bool:
    """The paper's format rule for one reply: it holds both ``<think>`` and ``</think>``."""
    return "<think>" in response and "</think>" in response
