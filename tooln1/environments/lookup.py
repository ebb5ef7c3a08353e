"""The synthetic lookup task (``tooln1.data.synthetic_multi_turn``) as a :class:`FunctionEnvironment`.

``find_user(name)`` answers ``{"user_id": id}`` from the record's directory (an unknown name
raises, which the model sees as an error observation); ``get_<fact>(user_id)`` answers a made-up
value for that id and ends the episode. The reward is the paper's scorer on the reply that called
the fact tool (``tooln1.reward.compute_reward`` against the record's answer, ``binary`` by
default: ``<think>`` and the exact call), so it is 1 only when the id was read from the first call.
"""
from __future__ import annotations

from tooln1.data.prompt import build_messages
from tooln1.environments.execution import ToolLimits
from tooln1.environments.functions import FunctionEnvironment
from tooln1.reward import KINDS, compute_reward

__all__ = ["LookupEnvironment"]


class LookupEnvironment(FunctionEnvironment):
    """One rollout of one lookup record."""

    @classmethod
    def from_record(cls, record: dict, limits: ToolLimits | None = None, reward_kind: str = "binary",
                    max_steps: int = 4) -> LookupEnvironment:
        if reward_kind not in KINDS:
            raise ValueError(f"unknown reward kind {reward_kind!r}; expected one of {KINDS}")
        directory = dict(record["directory"])

        def find_user(name: str) -> dict:
            if name not in directory:
                raise KeyError(f"no user named {name!r}")
            return {"user_id": directory[name]}

        def fact(tool: str):
            return lambda user_id: {"user_id": user_id, tool.removeprefix("get_"): f"{tool}-{user_id}"}

        facts = [t["name"] for t in record["tools"] if t["name"] != "find_user"]
        functions = {"find_user": find_user, **{name: fact(name) for name in facts}}
        answer = record["answer"]
        return cls(build_messages(record), record["tools"], functions, facts,
                   lambda reply: compute_reward(reply, answer, reward_kind), limits, max_steps)
