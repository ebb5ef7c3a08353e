"""Rule-based tool-call rewards (docs/design.md §7) and a batch scorer for the trainer.

``binary`` reproduces the authors' ``compute_score_v0`` decision by decision, but it never raises
and its running time is linear in the response length: the last ``<tool_call>…</tool_call>`` block
is found with ``str.find`` rather than a lazy DOTALL regex (which is quadratic on a response made
of many unclosed ``<tool_call>`` tags), and every failure of JSON decoding (deep nesting, huge
integers, bad escapes) or of hashing/serialising the calls is a zero reward.

Like the authors' scorer, the text is first cut at the last ``<|im_start|>assistant`` marker, so
passing prompt + response (the system prompt itself mentions ``<think>`` and contains a valid
``<tool_call>`` example) scores only the response. On a bare response the cut is a no-op.
"""
from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

KINDS = ("binary", "format_partial", "format_name_partial", "binary_no_think")
"""Reward kinds: the paper's binary reward and the Table-4 ablations (authors' v3, v4, v2)."""

_ASSISTANT_MARKER = "<|im_start|>assistant"
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class Verdict:
    """What the scorer decided about one response; every reward kind is a function of it."""

    format_ok: bool  # both "<think>" and "</think>" occur
    json_ok: bool  # the last <tool_call> block decoded to a list of {name, arguments} dicts
    names_match: bool  # multiset of call names equals the answer's
    full_match: bool  # multiset of (name, canonical arguments) equals the answer's


_NO_CALLS = Verdict(False, False, False, False)


def _last_block(text: str) -> str | None:
    """Content of the last ``<tool_call>(.*?)</tool_call>`` match (lazy, DOTALL), in linear time.

    ``re.finditer`` yields one match per closing tag whose preceding segment (the text since the
    previous closing tag) holds an opening tag: it runs from the segment's first opening tag to
    that closing tag; closing tags in segments without an opening tag are strays. So the last
    match is found by splitting on the closing tag and scanning segments from the end.
    """
    segments = text.split(_CLOSE)
    for segment in reversed(segments[:-1]):
        start = segment.find(_OPEN)
        if start >= 0:
            return segment[start + len(_OPEN) :]
    return None


def _loads(text: str) -> tuple[bool, Any]:
    """``json.loads`` that reports failure instead of raising (RecursionError, int limits, ...)."""
    try:
        return True, json.loads(text)
    except Exception:  # noqa: BLE001 - any decoding failure is "invalid JSON" for the reward
        return False, None


MAX_BLOCK_CHARS = 1 << 16
"""A <tool_call> block longer than this plus 8x the answer's JSON is "huge input" (docs/design.md §7).

Decoding a block that long is already costly, and no block that could match the answer is that long
(a matching block is the answer's JSON up to whitespace, escapes and number spelling).
"""


def extract_calls(response: str, max_block_chars: int | None = None) -> list | None:
    """The calls of the response's last ``<tool_call>`` block, or None when unusable.

    Authors' quirks kept: a JSON string payload is decoded once more, a dict becomes ``[dict]``.
    Unlike theirs, a payload that is not a list of dicts with ``name`` and ``arguments`` is None,
    and so is a block longer than ``max_block_chars`` (default ``MAX_BLOCK_CHARS``).
    """
    block = _last_block(response)
    if block is None:
        return None
    if len(block) > (MAX_BLOCK_CHARS if max_block_chars is None else max_block_chars):
        return None
    ok, payload = _loads(block.strip())
    if not ok:
        return None
    if isinstance(payload, str):
        ok, payload = _loads(payload)
        if not ok:
            return None
    if isinstance(payload, dict):
        payload = [payload]
    if not isinstance(payload, list):
        return None
    for item in payload:
        if not isinstance(item, dict) or "name" not in item or "arguments" not in item:
            return None
    return payload


def _match(calls: list, answer: list) -> tuple[bool, bool]:
    """(names_match, full_match) of two non-empty call lists, as the authors' validate_result.

    Multisets of different sizes never match, so that case costs nothing (a 1 MB response of
    30k calls is rejected without serialising them). A name that is unhashable or arguments that
    will not serialise make both False, as the authors' ``except TypeError: return 0`` does.
    """
    if len(calls) != len(answer):
        return False, False
    try:
        names = Counter(c["name"] for c in calls) == Counter(c["name"] for c in answer)
        if not names:
            return False, False
        full = Counter((c["name"], json.dumps(c["arguments"], sort_keys=True)) for c in calls) == Counter(
            (c["name"], json.dumps(c["arguments"], sort_keys=True)) for c in answer
        )
    except Exception:  # noqa: BLE001 - TypeError/RecursionError/ValueError -> no match
        return False, False
    return True, full


def parse_answer(answer_calls: Any) -> list | None:
    """Ground-truth calls from a list of dicts or its JSON string; None when malformed."""
    if isinstance(answer_calls, (str, bytes, bytearray)):
        ok, answer_calls = _loads(answer_calls)
        if not ok:
            return None
        if isinstance(answer_calls, str):  # doubly encoded, as the authors tolerate
            ok, answer_calls = _loads(answer_calls)
            if not ok:
                return None
    if isinstance(answer_calls, dict):
        answer_calls = [answer_calls]
    if not isinstance(answer_calls, (list, tuple)):
        return None
    for item in answer_calls:
        if not isinstance(item, dict) or "name" not in item or "arguments" not in item:
            return None
    return list(answer_calls)


def judge(response_text: Any, answer_calls: Any) -> Verdict:
    """Decide format, JSON validity and (name / full) match for one response. Never raises."""
    try:
        return _judge(response_text, answer_calls)
    except Exception:  # noqa: BLE001 - the reward must never take the trainer down
        return _NO_CALLS


def _judge(response_text: Any, answer_calls: Any) -> Verdict:
    if isinstance(response_text, (bytes, bytearray)):
        response_text = response_text.decode("utf-8", errors="replace")
    if not isinstance(response_text, str):
        return _NO_CALLS
    cut = response_text.rfind(_ASSISTANT_MARKER)
    text = response_text[cut:] if cut >= 0 else response_text
    format_ok = "<think>" in text and "</think>" in text
    answer = parse_answer(answer_calls)
    limit = MAX_BLOCK_CHARS
    if answer is not None:
        try:
            limit += 8 * len(json.dumps(answer))
        except Exception:  # noqa: BLE001 - unserialisable ground truth cannot match anyway
            answer = None
    calls = extract_calls(text, limit)
    if calls is None or answer is None:
        return Verdict(format_ok, calls is not None, False, False)
    if not calls or not answer:  # the authors' rule: empty matches only empty
        same = len(calls) == len(answer)
        return Verdict(format_ok, True, same, same)
    names, full = _match(calls, answer)
    return Verdict(format_ok, True, names, full)


def reward_from_verdict(v: Verdict, kind: str = "binary") -> float:
    """Map a verdict to the reward of ``kind`` (values: binary {0,1}; partials in steps of 0.2)."""
    if kind == "binary":
        return 1.0 if (v.format_ok and v.full_match) else 0.0
    if kind == "binary_no_think":
        return 1.0 if v.full_match else 0.0
    if kind == "format_partial":
        return (0.2 if v.format_ok else 0.0) + (0.8 if v.full_match else 0.0)
    if kind == "format_name_partial":
        total = 0.2 if v.format_ok else 0.0
        if v.full_match:
            return total + 0.8
        return total + (0.2 if v.names_match else 0.0)
    raise ValueError(f"unknown reward kind {kind!r}; expected one of {KINDS}")


def compute_reward(response_text: str, answer_calls: list[dict] | str, kind: str = "binary") -> float:
    """Reward of one response against the ground-truth calls (docs/design.md §7). Never raises on inputs.

    An unknown ``kind`` is a programming error and raises ``ValueError``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown reward kind {kind!r}; expected one of {KINDS}")
    return reward_from_verdict(judge(response_text, answer_calls), kind)


def _judge_chunk(pairs: list[tuple[Any, Any]]) -> list[Verdict]:
    return [judge(r, a) for r, a in pairs]


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(num_workers: int) -> ProcessPoolExecutor:
    """A cached process pool. Workers come from a forkserver that imported this module once:
    no fork of the trainer process (it holds JAX threads), and no per-worker re-import."""
    pool = _POOLS.get(num_workers)
    if pool is None:
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        pool = ProcessPoolExecutor(num_workers, mp_context=ctx)
        _POOLS[num_workers] = pool
    return pool


def shutdown_pools() -> None:
    """Stop the worker processes started by ``score_batch(num_workers>0)``."""
    for pool in _POOLS.values():
        pool.shutdown(cancel_futures=True)
    _POOLS.clear()


def score_batch(
    responses: Sequence[str],
    answers: Sequence[list[dict] | str],
    kind: str = "binary",
    num_workers: int = 0,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Score many responses; returns (rewards float32 [N], diagnostics of bool arrays [N]).

    ``answers`` has one entry per response (repeat each prompt's answer G times for groups).
    Diagnostics keys: ``format_ok``, ``json_ok``, ``names_match``, ``full_match`` (see Verdict);
    the trainer logs their means. ``num_workers > 0`` scores in that many worker processes (kept
    for later calls; ``shutdown_pools()`` stops them), worth it only for thousands of long responses.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown reward kind {kind!r}; expected one of {KINDS}")
    if len(responses) != len(answers):
        raise ValueError(f"score_batch: {len(responses)} responses but {len(answers)} answers")
    pairs = list(zip(responses, answers))
    if num_workers > 0 and len(pairs) > 1:
        chunk = max(1, -(-len(pairs) // (4 * num_workers)))
        chunks = [pairs[i : i + chunk] for i in range(0, len(pairs), chunk)]
        verdicts = [v for part in _pool(num_workers).map(_judge_chunk, chunks) for v in part]
    else:
        verdicts = _judge_chunk(pairs)
    rewards = np.array([reward_from_verdict(v, kind) for v in verdicts], dtype=np.float32)
    diagnostics = {
        name: np.array([getattr(v, name) for v in verdicts], dtype=bool)
        for name in ("format_ok", "json_ok", "names_match", "full_match")
    }
    return rewards, diagnostics
