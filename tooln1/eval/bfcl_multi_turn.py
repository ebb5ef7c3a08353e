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

import json
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

__all__ = ["BENCHMARK", "Respond", "play", "oracle_policy", "evaluate", "evaluate_model", "summarize"]

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
    envs, outputs = [], []
    for i, record in enumerate(records):
        env = BFCLEnvironment.from_record(record, limits=limits, require_think=require_think)
        envs.append(env)
        outputs.append(play(env, make_policy(env)))
        if log is not None and (i + 1) % 100 == 0:
            log(f"[eval] {BENCHMARK}: {i + 1}/{len(records)} entries")
    return _results(records, envs, outputs, split, require_think)


def evaluate_model(model: Any, tokenizer: Any, categories: Sequence[str] | None = None, split: str = "eval",
                   limit: int | None = None, require_think: bool = False, max_new_tokens: int = 512,
                   max_turns: int = 24, max_tokens: int = 4096, batch_size: int = 8,
                   limits: ToolLimits | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """:func:`evaluate` with a checkpoint's greedy policy: the rollout engine plays each entry's episode,
    continuing every reply from its environment's answer (`tooln1.rollout.multi_turn`). An episode cut
    by ``max_turns`` replies or ``max_tokens`` tokens after its prompt counts as failed."""
    import jax

    from tooln1.rollout.engine import Engine
    from tooln1.rollout.multi_turn import MultiTurnWorker
    from tooln1.rollout.sampling import SamplingConfig, eos_ids_for

    records = load_records(categories, split=split, limit=limit)
    envs = [BFCLEnvironment.from_record(r, limits=limits, require_think=require_think) for r in records]
    eos = eos_ids_for(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    sampling = SamplingConfig(num_samples=1, max_new_tokens=max_new_tokens, temperature=0.0, eos_ids=eos, pad_id=pad)
    worker = MultiTurnWorker(Engine(model), tokenizer, sampling, max_turns, max_tokens, every_prompt_full=True)
    outputs: list[list[str]] = []
    # batches of similar prompt lengths: the engine's length cap follows the batch's longest
    order = sorted(range(len(records)), key=lambda i: len(json.dumps(records[i]["entry"])))
    records, envs = [records[i] for i in order], [envs[i] for i in order]
    for start in range(0, len(records), batch_size):
        chunk = slice(start, start + batch_size)
        rollout = worker.run(records[chunk], jax.random.key(0), [[env] for env in envs[chunk]])
        outputs += [[text] for text in rollout.responses]
        if log is not None:
            log(f"[eval] {BENCHMARK}: {min(start + batch_size, len(records))}/{len(records)} entries")
    return _results(records, envs, outputs, split, require_think)


def _results(records: Sequence[dict], envs: Sequence[BFCLEnvironment], outputs: Sequence[list[str]], split: str,
             require_think: bool) -> dict[str, Any]:
    """The played episodes scored: per category and overall, with a sample row per entry."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    samples = []
    for record, env, replies in zip(records, envs, outputs):
        valid = env.reward() == 1.0
        counts[record["category"]][0] += int(valid)
        counts[record["category"]][1] += 1
        failed = next((t for t, v in enumerate(env.verdicts()) if not v["valid"]), None)
        samples.append({"benchmark": BENCHMARK, "category": record["category"], "id": record["id"],
                        "valid": valid, "format_ok": env.format_ok, "failed_turn": failed,
                        "turns": env.verdicts(), "decoded": env.decoded_calls(), "outputs": replies})
    per_category = {cat: {"accuracy": c / n, "correct_count": c, "total_count": n} for cat, (c, n) in counts.items()}
    summary = {**summarize(per_category), "split": describe_split(split),
               "split_settings": {"split": split, "seed": SPLIT_SEED, "eval_fraction": EVAL_FRACTION},
               "require_think": require_think}
    return {"categories": {BENCHMARK: per_category}, "summary": {BENCHMARK: summary}, "samples": samples}
