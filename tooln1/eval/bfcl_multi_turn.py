"""BFCL v3 multi-turn as a benchmark: episodes played through ``BFCLEnvironment``, scored by BFCL.

A policy answers one step at a time, ``respond(messages_so_far, tools_now) -> reply text``;
:func:`evaluate` makes one environment per entry, asks ``make_policy(env)`` for its policy and
plays the episode to its end. An entry is correct when its environment's reward is 1 (every turn
passes BFCL's state and response checkers; with ``require_think`` every reply also holds
``<think>…</think>``). The oracle policy (:func:`oracle_policy`) replies with BFCL's ground-truth
calls, one step per turn, then ends the turn with a text reply.

Which entries a number covers is part of the number: every result carries the split it was
computed on (``tooln1.environments.bfcl.split_indices``; held-out entries by default), and the
report prints it beside the table.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Sequence

from tooln1.environments.bfcl import (
    DEFAULT_CATEGORIES,
    EVAL_FRACTION,
    SPLIT_SEED,
    BFCLEnvironment,
    describe_split,
    load_records,
)
from tooln1.environments.execution import ToolLimits
from tooln1.eval.parsing import render_tool_calls

__all__ = ["BENCHMARK", "Respond", "play", "oracle_policy", "evaluate", "summarize"]

BENCHMARK = "bfcl-multi-turn"
Respond = Callable[[list[dict], list[dict]], str]
"""A policy: the conversation so far and the tools offered now → the next reply's text."""

END_OF_TURN = "<think>The request is done.</think> Done."


def play(env: BFCLEnvironment, respond: Respond) -> list[str]:
    """Run ``env``'s episode to its end with ``respond``; returns the replies in order.

    The environment bounds the episode (a turn ends on a reply without calls; more than
    20 steps in one turn end the episode), so this loop always finishes.
    """
    replies = []
    while not env.done:
        reply = respond(env.messages(), env.tools())
        replies.append(reply)
        env.step(reply)
    return replies


def oracle_policy(env: BFCLEnvironment) -> Respond:
    """BFCL's ground truth as replies: each turn's calls in one ``<tool_call>`` step (none for a
    turn whose answer is no call), then a text reply ending the turn. A ground-truth call string
    that is not valid Python cannot be written as a call and is left out."""
    replies = []
    for turn in range(env.num_turns):
        calls = [c for c in env.ground_truth_calls(turn) if c is not None]
        if calls:
            replies.append(render_tool_calls(calls))
        replies.append(END_OF_TURN)
    script = iter(replies)
    return lambda messages, tools: next(script, END_OF_TURN)


def summarize(per_category: dict[str, dict]) -> dict[str, Any]:
    """``overall``: the unweighted mean of the four categories BFCL v3 scores (None unless all
    four were evaluated); ``composite`` stays outside it, as in BFCL."""
    parts = [per_category.get(c) for c in DEFAULT_CATEGORIES]
    if any(p is None for p in parts):
        return {"overall": None}
    return {"overall": {"accuracy": sum(p["accuracy"] for p in parts) / len(parts),
                        "total_count": sum(p["total_count"] for p in parts)}}


def evaluate(make_policy: Callable[[BFCLEnvironment], Respond], categories: Sequence[str] | None = None,
             split: str = "eval", limit: int | None = None, require_think: bool = False,
             limits: ToolLimits | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Play every selected entry with ``make_policy(env)`` and score it.

    Returns ``{"categories": {BENCHMARK: {category: {accuracy, correct_count, total_count}}},
    "summary": {BENCHMARK: {overall, split}}, "samples": [...]}``, the layout the report reads.
    ``require_think`` adds the paper's format rule to BFCL's verdict (off: BFCL's own score).
    """
    records = load_records(categories, split=split, limit=limit)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    samples = []
    for i, record in enumerate(records):
        env = BFCLEnvironment.from_record(record, limits=limits, require_think=require_think)
        replies = play(env, make_policy(env))
        valid = env.reward() == 1.0
        counts[record["category"]][0] += int(valid)
        counts[record["category"]][1] += 1
        failed = next((t for t, v in enumerate(env.verdicts()) if not v["valid"]), None)
        samples.append({"benchmark": BENCHMARK, "category": record["category"], "id": record["id"],
                        "valid": valid, "format_ok": env.format_ok, "failed_turn": failed,
                        "turns": env.verdicts(), "decoded": env.decoded_calls(), "outputs": replies})
        if log is not None and (i + 1) % 100 == 0:
            log(f"[eval] {BENCHMARK}: {i + 1}/{len(records)} entries")
    per_category = {cat: {"accuracy": c / n, "correct_count": c, "total_count": n} for cat, (c, n) in counts.items()}
    summary = {**summarize(per_category), "split": describe_split(split),
               "split_settings": {"split": split, "seed": SPLIT_SEED, "eval_fraction": EVAL_FRACTION},
               "require_think": require_think}
    return {"categories": {BENCHMARK: per_category}, "summary": {BENCHMARK: summary}, "samples": samples}
