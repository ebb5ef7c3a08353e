"""API-Bank level-1 and level-2 ("Call" samples), scored by exact match of the call.

Data: ``level-1.json`` (399) and ``level-2.json`` (127) in the unified schema documented in the
shared data README (``{query: [{role, content}], tools: [...], answers: [{name, arguments}]}``),
looked up in ``data_dir`` (default ``../shared/data/apibank``, relative to the working directory).

Scoring: the response's first ``<tool_call>`` must hold exactly the reference calls — same
names and argument dicts equal as JSON values (no type coercion: ``"1" != 1``), call order free.
API-Bank's own evaluator instead *executes* the predicted call against its simulated APIs and
compares the returned result with the reference result, so it forgives differences the API
ignores (case of some ids, argument spellings the API normalises); exact match is stricter.
See docs/evaluation.md.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from tooln1.eval.parsing import CALLS, UNPARSEABLE, classify_response, render_tool_calls
from tooln1.eval.prompting import preamble_with
from tooln1.eval.samples import EvalSample, Verdict

__all__ = ["CATEGORIES", "DEFAULT_DATA_DIR", "SOURCE", "resolve_data_dir", "missing_files", "load_samples",
           "to_tool", "score"]

CATEGORIES = ("level-1", "level-2")
DEFAULT_DATA_DIR = Path("..") / "shared" / "data" / "apibank"
_ROLE = {"user": "user", "agent": "assistant", "assistant": "assistant", "tool": "tool"}
_TRAILER = re.compile(r"\s*Generate API Request:\s*\Z")
_FENCED_CALLS = re.compile(r"\A\s*```(?:json)?\s*(.*?)\s*```\s*\Z", re.DOTALL)


# Where a user without ../shared/data gets the files (the shared data README's provenance).
SOURCE = ("get apibank_l1.json and apibank_l2.json from https://github.com/MadeAgents/Hammer (data/test/original/), "
          "save them as DIR/apibank/level-1.json and DIR/apibank/level-2.json, and pass --data-dir DIR")


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The API-Bank folder; a clear error names it when it is missing."""
    path = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    if not path.is_dir():
        raise FileNotFoundError(
            f"API-Bank data folder {path.resolve()} not found (it must hold level-1.json and "
            f"level-2.json; default ../shared/data/apibank, relative to the working directory): {SOURCE} "
            f"(or data_dirs={{'apibank': ...}} from Python)."
        )
    return path


def missing_files(categories: Iterable[str] | None = None, data_dir: str | Path | None = None) -> list[Path]:
    """The files of ``categories`` (default both levels) absent from ``data_dir``, resolved."""
    root = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    return [(root / f"{cat}.json").resolve() for cat in (categories or CATEGORIES)
            if not (root / f"{cat}.json").is_file()]


def to_tool(api: dict[str, Any]) -> dict[str, Any]:
    """API-Bank's ``{name, description, parameters: {arg: {type, description}}, return}`` as a
    JSON-schema-style tool like the training data's (the return spec is not shown)."""
    return {
        "name": api["name"],
        "description": api.get("description", ""),
        "parameters": {"type": "object", "properties": api.get("parameters") or {}},
    }


def _message(msg: dict[str, str]) -> dict[str, str]:
    role = _ROLE.get(msg["role"])
    if role is None:
        raise ValueError(f"API-Bank: unknown role {msg['role']!r}")
    content = msg["content"]
    if msg["role"] == "assistant":  # an earlier API call, stored as ```[{"name", "arguments"}]```
        fenced = _FENCED_CALLS.match(content)
        try:
            calls = json.loads(fenced.group(1) if fenced else content)
            content = render_tool_calls(calls if isinstance(calls, list) else [calls],
                                        think="I need to call the API.")
        except (json.JSONDecodeError, TypeError, KeyError):
            pass  # keep the text as it is
    else:  # API-Bank's "Generate API Request:" cue ends the last message; it is not dialogue
        content = _TRAILER.sub("", content)
    return {"role": role, "content": content}


def load_samples(categories: Iterable[str] | None = None, limit: int | None = None,
                 data_dir: str | Path | None = None) -> list[EvalSample]:
    """API-Bank samples of ``categories`` (default both levels), first ``limit`` of each."""
    categories = list(categories or CATEGORIES)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown API-Bank categories {unknown}; choose from {list(CATEGORIES)}")
    root = resolve_data_dir(data_dir)
    samples = []
    for cat in categories:
        path = root / f"{cat}.json"
        if not path.is_file():
            raise FileNotFoundError(f"API-Bank file {path.resolve()} not found")
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
        for i, row in enumerate(rows[:limit] if limit is not None else rows):
            sid = f"apibank_{cat}_{i}"
            conversation = [_message(m) for m in row["query"]]
            # The marker "Generate API Request:" can leave an empty last agent turn; drop it.
            if conversation and conversation[-1]["role"] == "assistant" and not conversation[-1]["content"].strip():
                conversation.pop()
            record = {
                "id": sid,
                "source": f"apibank/{cat}",
                "system": preamble_with(""),
                "tools": [to_tool(t) for t in row["tools"]],
                "conversation": conversation,
                "answer": row["answers"],
            }
            samples.append(EvalSample("apibank", cat, sid, record, {"answers": row["answers"]}))
    return samples


def _key(call: dict[str, Any]) -> tuple[str, str]:
    return call["name"], json.dumps(call["arguments"], sort_keys=True, ensure_ascii=False)


def score(sample: EvalSample, response: str) -> Verdict:
    """Exact match of the first ``<tool_call>`` call list with the reference calls."""
    parsed = classify_response(response)
    if parsed.kind != CALLS:
        return Verdict(False, "decode_failed", parsed.reason, unparseable=parsed.kind == UNPARSEABLE)
    calls = parsed.calls
    try:
        same = Counter(map(_key, calls)) == Counter(map(_key, sample.target["answers"]))
    except (TypeError, ValueError) as err:  # unserialisable values cannot match
        return Verdict(False, "bad_arguments", str(err), calls)
    if same:
        return Verdict(True, decoded=calls)
    names_ok = Counter(c["name"] for c in calls) == Counter(c["name"] for c in sample.target["answers"])
    if names_ok:
        kind = "wrong_arguments"
    else:
        kind = "wrong_count" if len(calls) != len(sample.target["answers"]) else "wrong_name"
    return Verdict(False, kind, f"expected {sample.target['answers']}", calls)
