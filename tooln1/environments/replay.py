"""ToolACE's recorded multi-turn dialogues replayed as an environment (records: ``toolace-trajectories:``).

A record's ``replay`` holds the dialogue per user turn: its text and the assistant's call steps, each
with the tool responses recorded after it (`tooln1.data.sources.toolace_replay`). Nothing is executed.
A reply whose calls match the turn's next recorded step (the trainer's exact match, `tooln1.reward.judge`:
the same calls with the same arguments, in any order) gets that step's recorded responses; any other
call gets an error observation and fails the turn. A reply without a call ends the user turn, which
passes when each of its recorded steps was matched and no call went unmatched; the next user turn is
the observation. The reward is 1 only when every turn passed and, with ``require_think``, every reply
holds ``<think>…</think>``.
"""
from __future__ import annotations

from tooln1.data.prompt import build_messages
from tooln1.data.sources import unanswered_step
from tooln1.environments.base import Step, has_think, tool_responses
from tooln1.environments.execution import ToolLimits, cap
from tooln1.eval.parsing import CALLS, classify_response
from tooln1.reward import judge

__all__ = ["ReplayEnvironment", "MAX_STEPS_PER_TURN"]

MAX_STEPS_PER_TURN = 20
"""Replies in one user turn after which the episode ends as failed (BFCL's runner uses the same bound)."""


def _well_formed(turns) -> bool:
    def step_ok(step) -> bool:
        return isinstance(step, dict) and all(isinstance(step.get(k), list) for k in ("calls", "responses"))

    return isinstance(turns, list) and bool(turns) and all(
        isinstance(t, dict) and isinstance(t.get("user"), str) and isinstance(t.get("steps"), list)
        and all(map(step_ok, t["steps"])) for t in turns)


class ReplayEnvironment:
    """One rollout of one recorded dialogue (see the module doc)."""

    def __init__(self, record: dict, limits: ToolLimits | None = None, require_think: bool = True):
        self.id = record.get("id")
        turns = record.get("replay")
        if not _well_formed(turns):
            raise ValueError(f"record {self.id!r}: 'replay' must be a non-empty list of turns "
                             "{user: str, steps: [{calls: list, responses: list}]}")
        if unanswered_step(turns):
            raise ValueError(f"record {self.id!r}: only the dialogue's last call step may have no recorded response")
        self._record = record
        self._turns = turns
        self._limits = limits or ToolLimits()
        self._require_think = require_think
        self._messages = build_messages(record)
        self._turn = 0
        self._matched = 0  # recorded steps of this turn matched so far
        self._replies = 0  # replies in this turn
        self._turn_ok = True
        self._passed: list[bool] = []
        self._format_ok = True
        self._done = False

    @classmethod
    def from_record(cls, record: dict, limits: ToolLimits | None = None, require_think: bool = True
                    ) -> ReplayEnvironment:
        return cls(record, limits, require_think)

    # -- the interface
    def tools(self) -> list[dict]:
        return list(self._record["tools"])

    def messages(self) -> list[dict]:
        return [dict(m) for m in self._messages]

    def step(self, response: str) -> Step:
        if self._done:
            raise RuntimeError(f"record {self.id!r}: step() after the episode ended")
        self._messages.append({"role": "assistant", "content": response})
        self._format_ok = self._format_ok and has_think(response)
        self._replies += 1
        parsed = classify_response(response)
        if parsed.kind != CALLS or not parsed.calls:
            return self._end_turn()
        steps = self._turns[self._turn]["steps"]
        if self._matched < len(steps) and judge(response, steps[self._matched]["calls"]).full_match:
            results = steps[self._matched]["responses"]
            self._matched += 1
            if not results:  # the dialogue ends on this call
                return self._end_turn()
        else:
            self._turn_ok = False
            results = [f"Error: no recorded result for this call to {c['name']!r}" for c in parsed.calls]
        results = [cap(text, self._limits.max_chars) for text in results]
        self._messages.extend({"role": "tool", "content": text} for text in results)
        if self._replies >= MAX_STEPS_PER_TURN:
            self._done = True
            return Step("", True, 0.0)
        return Step(tool_responses(results), False)

    def reward(self) -> float:
        if not self._done or len(self._passed) != len(self._turns):
            return 0.0
        return 1.0 if all(self._passed) and (self._format_ok or not self._require_think) else 0.0

    # -- what reports read
    @property
    def done(self) -> bool:
        return self._done

    def passed_turns(self) -> list[bool]:
        """Per finished user turn: whether it passed."""
        return list(self._passed)

    def _end_turn(self) -> Step:
        passed = self._turn_ok and self._matched == len(self._turns[self._turn]["steps"])
        self._passed.append(passed)
        self._turn += 1
        self._matched, self._replies, self._turn_ok = 0, 0, True
        if self._turn == len(self._turns):
            self._done = True
            return Step("", True, float(passed))
        question = self._turns[self._turn]["user"]
        self._messages.append({"role": "user", "content": question})
        return Step(question, False, float(passed))
