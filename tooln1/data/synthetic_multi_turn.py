"""Synthetic two-call records: the answer needs a value that only a first call returns.

The user asks for one fact about a person (``balance of "alice"``); the tools are ``find_user``
(name → ``user_id``) and the fact's tool, which takes that ``user_id``. Each record draws its own
random id (a digit: one token to carry over, and a 1-in-9 guess, so GRPO sees rewards from the
start), so the second call is right every time only when the model reads it from the first call's
``<tool_response>``: a task about using an observation, small enough for a tiny CPU model (names
from a closed set of four, quoted as they are passed, like ``synthetic-tiny``).

Records are unified records (docs/design.md §6) plus ``env: "lookup"`` and ``directory``
(name → id) for :class:`tooln1.environments.lookup.LookupEnvironment`, and ``oracle_calls``, the calls
of each reply of a trajectory (what SFT teaches); ``answer`` is the final call, so the
single-turn scorer rates the reply that makes it. With ``careless`` > 0 that fraction of the
trajectories is a careless teacher's: its final call passes ``DEFAULT_ID`` instead of the id
``find_user`` returned (the reward still wants the right one), so SFT leaves a policy that often
ignores the observation and GRPO has something to correct.
"""
from __future__ import annotations

import random

from tooln1.data.records import make_record

__all__ = ["NAMES", "FACTS", "FIND_USER", "DEFAULT_ID", "fact_tool", "generate_lookup_records"]

NAMES = ("alice", "bob", "carol", "dave")
FACTS = ("balance", "email", "orders")
DEFAULT_ID = 1  # what the careless teacher passes without reading the lookup
FIND_USER = {"name": "find_user", "description": "Look up a user's id by name.",
             "parameters": {"type": "object", "properties": {"name": {"type": "string", "description": "User name."}},
                            "required": ["name"]}}


def fact_tool(fact: str) -> dict:
    """The schema of the tool that returns ``fact`` for a user id."""
    return {"name": f"get_{fact}", "description": f"The {fact} of a user, by user id.",
            "parameters": {"type": "object",
                           "properties": {"user_id": {"type": "integer", "description": "Id from find_user."}},
                           "required": ["user_id"]}}


def generate_lookup_records(n: int, seed: int = 0, num_facts: int = 1, careless: float = 0.0) -> list[dict]:
    """``n`` records, deterministic in ``seed``; ``num_facts`` fact tools are offered (the asked one
    among them), so 1 asks only for the id to be carried over, 3 also for the right tool; a
    ``careless`` fraction of the oracle trajectories end with ``DEFAULT_ID`` (the records are the
    same for every ``careless``)."""
    if n < 0:
        raise ValueError(f"generate_lookup_records: n={n} must be >= 0")
    if not 0.0 <= careless <= 1.0:
        raise ValueError(f"generate_lookup_records: careless={careless} must be in [0, 1]")
    if not 1 <= num_facts <= len(FACTS):
        raise ValueError(f"generate_lookup_records: num_facts={num_facts} must be in 1..{len(FACTS)}")
    rng = random.Random(seed)
    teacher = random.Random(f"careless-{seed}")  # its own stream: the records do not depend on careless
    records = []
    for i in range(n):
        name, fact, user_id = rng.choice(NAMES), rng.choice(FACTS), rng.randint(1, 9)
        offered = [fact] + rng.sample([f for f in FACTS if f != fact], num_facts - 1)
        rng.shuffle(offered)
        tools = [FIND_USER] + [fact_tool(f) for f in offered]
        record = make_record(f"lookup-{seed}-{i}", "synthetic-lookup", "", tools,
                             [{"role": "user", "content": f'{fact} of "{name}"'}],
                             [{"name": f"get_{fact}", "arguments": {"user_id": user_id}}])
        first = [{"name": "find_user", "arguments": {"name": name}}]
        final = record["answer"]
        if teacher.random() < careless:
            final = [{"name": f"get_{fact}", "arguments": {"user_id": DEFAULT_ID}}]
        records.append({**record, "env": "lookup", "directory": {name: user_id}, "oracle_calls": [first, final]})
    return records
