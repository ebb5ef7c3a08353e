"""Turn a model response into the call list the benchmark checkers consume.

Evaluation reads the **first** ``<tool_call>…</tool_call>`` block of a response (the Tool-N1
authors' BFCL handler does the same; the training reward reads the last one, see
``tooln1.reward``). Its payload is JSON: a list of ``{"name", "arguments"}`` objects, or one
such object. The checkers (BFCL's ``ast_checker``, our ACEBench checker) want
``[{name: arguments}, ...]``; API-Bank's exact match uses the ``{"name", "arguments"}`` form.

Anything that is not a well-formed call list raises :class:`ToolCallParseError`.
:func:`classify_response` tells the three outcomes apart for the scorers: a call list
(``CALLS``, possibly empty), a clean text answer without tool-call markup (``NO_CALL``), and
``UNPARSEABLE`` — a ``<tool_call>`` block that does not decode, or no answer at all (empty,
an unfinished ``<think>``, no letter or digit). Unparseable outputs are failures everywhere,
irrelevance categories included, and are counted apart in the report.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

__all__ = [
    "ToolCallParseError",
    "CALLS",
    "NO_CALL",
    "UNPARSEABLE",
    "ParsedResponse",
    "classify_response",
    "extract_tool_calls",
    "to_checker_format",
    "parse_for_checker",
    "render_tool_calls",
]

# A closing tag is expected; a block left open at the end of the response (generation stopped
# right after the JSON) is accepted too, so a missing `</tool_call>` alone does not fail a sample.
_FIRST_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_TRAILING_SPECIALS = re.compile(r"(?:<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>)+\s*\Z")
_MAX_CHARS = 200_000  # bound the work on degenerate generations
# BFCL's is_empty_output counts these payloads as "no call", like an empty list.
_EMPTY_PAYLOADS = ("{}", "[{}]")

CALLS, NO_CALL, UNPARSEABLE = "calls", "no_call", "unparseable"


class ToolCallParseError(ValueError):
    """The response holds no parseable ``<tool_call>`` call list."""


def extract_tool_calls(text: str) -> list[dict[str, Any]]:
    """Return the calls of the first ``<tool_call>`` block as ``[{"name", "arguments"}]``.

    A JSON-string payload is decoded once more; a single object becomes a one-element list;
    ``arguments`` given as a JSON string is decoded. ``[]`` is a valid (empty) call list.
    """
    if not isinstance(text, str):
        raise ToolCallParseError(f"response is {type(text).__name__}, not str")
    match = _FIRST_BLOCK.search(text[:_MAX_CHARS])
    if match is None:
        raise ToolCallParseError("no <tool_call> block in the response")
    body = _TRAILING_SPECIALS.sub("", match.group(1)).strip()
    try:
        payload = json.loads(body)
        if isinstance(payload, str):
            payload = json.loads(payload)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ToolCallParseError(f"<tool_call> payload is not JSON: {err}") from None
    if isinstance(payload, dict):
        payload = [payload]
    if not isinstance(payload, list):
        raise ToolCallParseError(f"<tool_call> payload is a JSON {type(payload).__name__}, not a list")
    calls = []
    for i, item in enumerate(payload):
        if not isinstance(item, dict) or "name" not in item:
            raise ToolCallParseError(f"call {i} is not an object with a 'name'")
        name, args = item["name"], item.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                raise ToolCallParseError(f"call {i} has non-JSON string arguments") from None
        if not isinstance(name, str) or not isinstance(args, dict):
            raise ToolCallParseError(f"call {i}: name must be a string and arguments an object")
        calls.append({"name": name, "arguments": args})
    return calls


@dataclasses.dataclass(frozen=True)
class ParsedResponse:
    """How a response reads: ``kind`` is CALLS (``calls`` holds them, maybe ``[]``), NO_CALL or
    UNPARSEABLE; ``reason`` says why it is not CALLS."""

    kind: str
    calls: list[dict[str, Any]] | None = None
    reason: str = ""


def _answer_text(text: str) -> str:
    """The part of a response after its reasoning: what follows the last ``</think>``; nothing
    when a ``<think>`` was opened and never closed (generation stopped mid-thought)."""
    text = _TRAILING_SPECIALS.sub("", text)
    close = text.rfind("</think>")
    if close >= 0:
        return text[close + len("</think>"):]
    return "" if "<think>" in text else text


def classify_response(text: Any) -> ParsedResponse:
    """CALLS, NO_CALL or UNPARSEABLE for one response (never raises).

    With a ``<tool_call>`` block: CALLS when it decodes (see :func:`extract_tool_calls`; the
    payloads ``[]``, ``{}`` and ``[{}]`` are an empty call list), else UNPARSEABLE. Without
    one: NO_CALL when the answer part (:func:`_answer_text`) has a letter or digit, else
    UNPARSEABLE (empty output, an unfinished thought, control characters or punctuation only).
    """
    if not isinstance(text, str):
        return ParsedResponse(UNPARSEABLE, reason=f"response is {type(text).__name__}, not str")
    text = text[:_MAX_CHARS]
    match = _FIRST_BLOCK.search(text)
    if match is not None:
        try:
            return ParsedResponse(CALLS, extract_tool_calls(text))
        except ToolCallParseError as err:
            body = re.sub(r"\s+", "", _TRAILING_SPECIALS.sub("", match.group(1)))
            if body in _EMPTY_PAYLOADS:
                return ParsedResponse(CALLS, [])
            return ParsedResponse(UNPARSEABLE, reason=str(err))
    if any(ch.isalnum() for ch in _answer_text(text)):
        return ParsedResponse(NO_CALL, reason="no <tool_call> block in the response")
    return ParsedResponse(UNPARSEABLE, reason="no answer: empty, an unfinished <think>, or no letter or digit")


def to_checker_format(calls: list[dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """``[{"name": n, "arguments": a}]`` -> ``[{n: a}]`` (BFCL / ACEBench decoded-AST format)."""
    return [{call["name"]: call["arguments"]} for call in calls]


def parse_for_checker(text: str) -> list[dict[str, dict[str, Any]]]:
    """First ``<tool_call>`` block of ``text`` in checker format; raises ToolCallParseError."""
    return to_checker_format(extract_tool_calls(text))


def render_tool_calls(calls: list[dict[str, Any]], think: str = "I will call the tools.") -> str:
    """A response in the paper's format for ``calls`` — used to build oracle outputs in tests
    and for earlier assistant tool calls in multi-turn context."""
    body = json.dumps([{"name": c["name"], "arguments": c["arguments"]} for c in calls],
                      ensure_ascii=False)
    return f"<think>{think}</think>\n<tool_call>{body}</tool_call>"
