"""Parse ToolACE's Python-style assistant calls ``[Func Name(a="x", b=[1, 2]), m.f()]`` into dicts.

Tool names in ToolACE are free text (spaces, dots, dashes, ``|``, ``?``, ``/``), so the call list
is not Python and cannot go to ``ast.parse`` whole. A small scanner splits it into
``name(args)`` pieces and top-level ``key=value`` pairs, respecting quotes and brackets; each value
is parsed with ``ast.parse(..., mode="eval")`` and converted by walking the literal nodes (no
``eval``). JSON spellings ``true/false/null`` are accepted, tuples become lists. A value that is
not a literal but is a bare word without quotes or brackets (``date=2023-05-01``) is kept as its
text, as the authors' preprocessing does; anything else makes the whole call list unparseable.
"""
from __future__ import annotations

import ast
from typing import Any

_NAMED_CONSTANTS = {"True": True, "False": False, "None": None, "true": True, "false": False, "null": None}
_OPENERS, _CLOSERS = "([{", ")]}"
_NAME_FORBIDDEN = set("()[]{}\"'=,\n")


class CallParseError(ValueError):
    """The text is not a parseable ToolACE call list."""


def looks_like_call_list(text: str) -> bool:
    """True for assistant turns that are meant as calls: ``[`` … ``(`` … ``]`` (authors' test)."""
    s = text.strip()
    return s.startswith("[") and s.endswith("]") and "(" in s


def parse_calls(text: str) -> list[dict[str, Any]]:
    """``[f(a=1), Other Tool(b="x")]`` → ``[{"name": "f", "arguments": {"a": 1}}, ...]``.

    Raises CallParseError with the reason on anything it cannot read exactly.
    """
    s = text.strip()
    if not (s.startswith("[") and s.endswith("]")):
        raise CallParseError("call list must be enclosed in [ ]")
    body = s[1:-1]
    calls = []
    pos = 0
    while True:
        pos = _skip(body, pos, " \t\r\n,")
        if pos >= len(body):
            break
        paren = body.find("(", pos)
        if paren < 0:
            raise CallParseError(f"expected '(' after function name near {body[pos:pos + 30]!r}")
        name = body[pos:paren].strip()
        if not name or _NAME_FORBIDDEN & set(name):
            raise CallParseError(f"bad function name {name!r}")
        close = _matching(body, paren)
        calls.append({"name": name, "arguments": _parse_arguments(body[paren + 1 : close])})
        pos = _skip(body, close + 1, " \t\r\n")
        if pos < len(body) and body[pos] != ",":
            raise CallParseError(f"expected ',' between calls near {body[pos:pos + 30]!r}")
    if not calls:
        raise CallParseError("empty call list")
    return calls


def _skip(s: str, pos: int, chars: str) -> int:
    while pos < len(s) and s[pos] in chars:
        pos += 1
    return pos


def _scan_string(s: str, pos: int) -> int:
    """Index just past the string literal starting at ``pos`` (handles escapes, triple quotes)."""
    quote = s[pos]
    if s.startswith(quote * 3, pos):
        end = s.find(quote * 3, pos + 3)
        if end < 0:
            raise CallParseError("unterminated triple-quoted string")
        return end + 3
    i = pos + 1
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == quote:
            return i + 1
        i += 1
    raise CallParseError("unterminated string")


def _matching(s: str, open_pos: int) -> int:
    """Index of the bracket closing the one at ``open_pos``, skipping strings."""
    stack = []
    i = open_pos
    while i < len(s):
        c = s[i]
        if c in "\"'":
            i = _scan_string(s, i)
            continue
        if c in _OPENERS:
            stack.append(_CLOSERS[_OPENERS.index(c)])
        elif c in _CLOSERS:
            if not stack or stack.pop() != c:
                raise CallParseError(f"unbalanced {c!r}")
            if not stack:
                return i
        i += 1
    raise CallParseError("unclosed bracket")


def _split_top_level(s: str) -> list[str]:
    """Split on commas outside strings and brackets."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "\"'":
            i = _scan_string(s, i)
            continue
        if c in _OPENERS:
            depth += 1
        elif c in _CLOSERS:
            depth -= 1
            if depth < 0:
                raise CallParseError(f"unbalanced {c!r}")
        elif c == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
        i += 1
    if depth:
        raise CallParseError("unbalanced brackets in arguments")
    parts.append(s[start:])
    return parts


def _parse_arguments(src: str) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    if not src.strip():
        return arguments
    for part in _split_top_level(src):
        if not part.strip():
            continue  # trailing comma
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or _NAME_FORBIDDEN & set(key) or not value:
            raise CallParseError(f"argument {part.strip()[:40]!r} is not key=value")
        if key in arguments:
            raise CallParseError(f"argument {key!r} given twice")
        arguments[key] = _parse_value(value)
    return arguments


def _parse_value(src: str) -> Any:
    try:
        tree = ast.parse(src, mode="eval")
        return _literal(tree.body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        if set(src) & set("\"'()[]{}"):
            raise CallParseError(f"value {src[:40]!r} is not a literal") from None
        return src  # bare word, e.g. date=2023-05-01 or city=New York


def _literal(node: ast.AST) -> Any:
    """Convert an expression node of literals to JSON-compatible Python values."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (str, int, float, bool)) or node.value is None:
            return node.value
        raise ValueError(f"unsupported constant {node.value!r}")
    if isinstance(node, ast.Name) and node.id in _NAMED_CONSTANTS:
        return _NAMED_CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("sign on a non-number")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values):
            if k is None:
                raise ValueError("** in dict literal")
            key = _literal(k)
            if not isinstance(key, str):
                if isinstance(key, (list, dict)):
                    raise ValueError("unhashable dict key")
                key = str(key) if not isinstance(key, bool) else str(key).lower()
            out[key] = _literal(v)
        return out
    raise ValueError(f"not a literal: {type(node).__name__}")
