"""The paper's task as an environment: one reply, scored by ``tooln1.reward``, then done.

Nothing is executed: the reply's calls are compared with the record's reference calls by the
same scorer the trainer uses (``reward.compute_reward`` is ``score_batch``'s per-reply decision),
so a single-turn rollout through this interface gets exactly today's rewards.
"""
from __future__ import annotations

from typing import Any

from tooln1.data.prompt import build_messages
from tooln1.environments.base import Step
from tooln1.reward import KINDS, compute_reward

__all__ = ["SingleTurnEnvironment"]


class SingleTurnEnvironment:
    """One unified record (docs/design.md §6); done after the first reply."""

    def __init__(self, record: dict, reward_kind: str = "binary"):
        if reward_kind not in KINDS:
            raise ValueError(f"unknown reward kind {reward_kind!r}; expected one of {KINDS}")
        self._record = record
        self._kind = reward_kind
        self._messages = build_messages(record)
        self._reward: float | None = None

    @classmethod
    def from_record(cls, record: dict, reward_kind: str = "binary", limits: Any = None) -> SingleTurnEnvironment:
        """``limits`` is accepted so every kind takes it; nothing runs here for it to limit."""
        return cls(record, reward_kind)

    def tools(self) -> list[dict]:
        return list(self._record["tools"])

    def messages(self) -> list[dict]:
        return list(self._messages)

    def step(self, response: str) -> Step:
        if self._reward is not None:
            raise RuntimeError(f"record {self._record.get('id')!r}: step() after the single turn ended")
        self._reward = compute_reward(response, self._record["answer"], self._kind)
        self._messages.append({"role": "assistant", "content": response})
        return Step("", True, self._reward)

    def reward(self) -> float:
        return 0.0 if self._reward is None else self._reward
