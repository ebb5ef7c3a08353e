"""The Tool-N1 prompt (docs/design.md §5): preamble + ``# Tool`` block as system message, then the turns.

The model sees the tools only through the system text (the chat template's own ``tools=`` branch
is not used), exactly as the authors' preprocessing builds it.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import numpy as np

from tooln1.data.tokens import left_pad

DEFAULT_PREAMBLE = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. \n"
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose. \n"
    "If none of the function can be used, point it out. If the given question lacks the parameters required by the function,\n"  # noqa: E501 (the template verbatim, one source line per text line)
    "also point it out. You should only return the function call in tools call sections. Here is a list of functions in JSON format that you can invoke:\n"  # noqa: E501 (the template verbatim, one source line per text line)
)
"""The xLAM system preamble (docs/design.md §5), byte for byte: trailing spaces and final newline included."""

TOOL_BLOCK_HEAD = "# Tool\n\nHere is a list of functions in JSON format that you can invoke:\n\n<tools>\n"
TOOL_BLOCK_TAIL = (
    "\n</tools>\n"
    "\n"
    "In each action step, you MUST: \n"
    "1. Think about the reasoning process in the mind and enclosed your reasoning within <think> </think> XML tags.\n"
    '2. Then, provide a json object with function names and arguments within <tool_call></tool_call> XML tags. i.e., <tool_call>[{"name": <function-name>, "arguments": <args-json-object>}, {"name": <function-name2>, "arguments": <args-json-object2>}, ...]</tool_call>\n'  # noqa: E501 (the template verbatim, one source line per text line)
    "3. Make sure both the reasoning and the tool call steps are included together in one single reply.\n"
    'A complete reply example is: <think>To address the query, I need to send the email to Bob and then buy the banana through walmart. </think> <tool_call> [{"name": "email", "arguments": {"receiver": "Bob", "content": "I will bug banana through walmart"}}, {"name": "walmart", "arguments": {"input": "banana"}}]</tool_call>. Please make sure the type of the arguments is correct. \n'  # noqa: E501 (the template verbatim, one source line per text line)
)

ROLES = ("user", "assistant", "tool")


def tool_block(tools: Sequence[dict]) -> str:
    """The ``# Tool`` block: one ``json.dumps({"type": "function", "function": tool})`` per line."""
    lines = "\n".join(json.dumps({"type": "function", "function": tool}) for tool in tools)
    return TOOL_BLOCK_HEAD + lines + TOOL_BLOCK_TAIL


def system_prompt(tools: Sequence[dict], preamble: str = DEFAULT_PREAMBLE) -> str:
    """System message text: the preamble followed directly by the tool block."""
    return preamble + tool_block(tools)


def build_messages(record: dict) -> list[dict[str, str]]:
    """Chat messages of a unified record: system (preamble + tools), then its conversation."""
    preamble = record.get("system") or DEFAULT_PREAMBLE
    messages = [{"role": "system", "content": system_prompt(record["tools"], preamble)}]
    for i, turn in enumerate(record["conversation"]):
        if turn.get("role") not in ROLES:
            raise ValueError(f"record {record.get('id')!r}: conversation[{i}].role={turn.get('role')!r} "
                             f"is not one of {ROLES}")
        messages.append({"role": turn["role"], "content": turn["content"]})
    return messages


def render_prompt(record: dict, tokenizer: Any) -> str:
    """The templated prompt string (``add_generation_prompt=True``) the sampler continues."""
    return tokenizer.apply_chat_template(build_messages(record), tokenize=False, add_generation_prompt=True)


def tokenize_prompts(records: Sequence[dict], tokenizer: Any) -> list[list[int]]:
    """Each record's templated prompt as token ids (none added: the template has its own)."""
    texts = [render_prompt(r, tokenizer) for r in records]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def prompt_batch(records: Sequence[dict], tokenizer: Any, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)`` of the records' prompts, left-padded to the longest: what the sampler continues."""
    tokens = tokenize_prompts(records, tokenizer)
    return left_pad(tokens, max(len(t) for t in tokens), pad_id)


def prompt_token_counts(records: Sequence[dict], tokenizer: Any, batch_size: int = 256) -> list[int]:
    """Number of tokens of each record's rendered prompt (specials included, none added)."""
    counts: list[int] = []
    for start in range(0, len(records), batch_size):
        texts = [render_prompt(r, tokenizer) for r in records[start : start + batch_size]]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        counts.extend(len(ids) for ids in encoded)
    return counts


def filter_by_prompt_length(
    records: Iterable[dict], tokenizer: Any, max_tokens: int = 4096
) -> tuple[list[dict], dict[str, int]]:
    """Keep records whose rendered prompt has at most ``max_tokens`` tokens (paper: 4096).

    Returns (kept, counts) with counts ``{"kept": k, "prompt_too_long": d}``.
    """
    records = list(records)
    counts = prompt_token_counts(records, tokenizer)
    kept = [r for r, n in zip(records, counts) if n <= max_tokens]
    return kept, {"kept": len(kept), "prompt_too_long": len(records) - len(kept)}
