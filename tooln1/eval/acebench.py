"""ACEBench (English) normal atom and single-turn categories, with ACEBench's checker rules.

No package ships ACEBench's checker, so its normal-category rules (``model_eval/checker.py``:
``normal_checker`` → ``simple_function_checker`` → type / string / list / dict checks) are
re-implemented here, quirks included, so our numbers compare with published ones:

- **Whitespace**: the original removes *all* whitespace from the raw response before decoding
  it, so ``"New York"`` arrives as ``"NewYork"``. With ``strip_whitespace=True`` (default) we do
  the same to every string of the decoded calls. Because some reference values keep their
  spaces inside lists/objects, a few perfect answers fail (oracle: atom 283/300, single-turn
  178/200, as in the original). ``strip_whitespace=False`` scores them all correct.
- Names: reference keys carry ``_1``, ``_2``… suffixes for repeated calls; any ``_<digits>``
  suffix is removed. Call counts per name must match exactly.
- Each reference call is satisfied by *some* predicted call of the same name that passes
  ``simple_function_checker`` (a predicted call may serve two references).
- ``simple_function_checker``: required parameters present; no parameter outside both the
  spec and the reference; the value's type must match the spec (``number`` means int; a value
  whose type equals the *reference's* type is a "variable" and skips the value check; the
  strings "true"/"false" pass as booleans). Values are then checked only for strings
  (reference, normalised, must be a *substring* of the prediction), lists (normalised,
  order-sensitive equality), objects (same key count; nested objects recurse; leaves compare as
  ``str(reference) in str(prediction)``) and lists of objects (element-wise object check).
  Integers, floats and booleans at the top level get a type check only.
- Normalisation (``standardize_string``): drop spaces and ``,./-_*^``, lower-case, ``'``→``"``.
- Where the original would raise (unknown type name, function not found), the sample fails.

Scores: per category accuracy; ``atom`` = unweighted mean of its six categories, ``single_turn``
= unweighted mean of single and parallel (ACEBench's ``calculate_unweighted_accuracy``).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from tooln1.eval.parsing import CALLS, UNPARSEABLE, classify_response, to_checker_format
from tooln1.eval.prompting import preamble_with
from tooln1.eval.samples import EvalSample, Verdict

__all__ = [
    "ATOM", "SINGLE_TURN", "CATEGORIES", "DEFAULT_DATA_DIR", "SOURCE", "resolve_data_dir", "missing_files",
    "load_samples",
    "strip_index_suffix", "standardize_string", "normal_checker", "score", "summarize",
]

ATOM = ("atom_bool", "atom_enum", "atom_number", "atom_list", "atom_object_short", "atom_object_deep")
SINGLE_TURN = ("single_turn_single_function", "single_turn_parallel_function")
CATEGORIES = ATOM + SINGLE_TURN
DEFAULT_DATA_DIR = Path("..") / "shared" / "data" / "acebench"

_TYPE = {
    "string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list,
    "dict": dict, "any": str, "list": list, "object": dict, "objectArray": list,
    "list(string)": list, "list(enum)": list, "int": int, "enum": enumerate, "number": int,
}
_NESTED = ("array", "tuple", "list(string)", "list(enum)", "object", "objectArray")
_TURN = re.compile(r"^(user|system):\s?", re.MULTILINE)


class _CheckerCrash(Exception):
    """A case where ACEBench's own code would raise."""


# ----------------------------------------------------------------------------- data
# Where a user without ../shared/data gets the files (the shared data README's provenance).
SOURCE = ("get data_normal_*.json and possible_answer/ from https://github.com/ACEBench/ACEBench "
          "(data_all/data_en/) into DIR/acebench/, and pass --data-dir DIR")


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The ACEBench folder; a clear error names it when it is missing."""
    path = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    if not path.is_dir() or not (path / "possible_answer").is_dir():
        raise FileNotFoundError(
            f"ACEBench data folder {path.resolve()} not found (it must hold data_normal_*.json "
            f"and possible_answer/; default ../shared/data/acebench, relative to the working "
            f"directory): {SOURCE} (or data_dirs={{'acebench': ...}} from Python)."
        )
    return path


def missing_files(categories: Iterable[str] | None = None, data_dir: str | Path | None = None) -> list[Path]:
    """The question and answer files of ``categories`` (default all) absent from ``data_dir``."""
    root = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    wanted = [p for cat in (categories or CATEGORIES)
              for p in (root / f"data_normal_{cat}.json", root / "possible_answer" / f"data_normal_{cat}.json")]
    return [p.resolve() for p in wanted if not p.is_file()]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"ACEBench file {path.resolve()} not found")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _to_tool(func: dict[str, Any]) -> dict[str, Any]:
    """605 ACEBench specs name their schema ``arguments``; show every tool with ``parameters``."""
    params = func.get("parameters", func.get("arguments", {}))
    return {"name": func["name"], "description": func.get("description", ""), "parameters": params}


def _conversation(question: str) -> list[dict[str, str]]:
    """ACEBench's ``"user: …\\nsystem: …\\nuser: …"`` history as chat turns (``system`` is the
    assistant's side); text that does not follow the pattern becomes one user turn."""
    marks = list(_TURN.finditer(question))
    if not marks or marks[0].start() != 0:
        return [{"role": "user", "content": question.strip()}]
    turns = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(question)
        role = "user" if m.group(1) == "user" else "assistant"
        turns.append({"role": role, "content": question[m.end():end].strip()})
    return turns


def load_samples(categories: Iterable[str] | None = None, limit: int | None = None,
                 data_dir: str | Path | None = None) -> list[EvalSample]:
    """ACEBench samples of ``categories`` (default all eight), first ``limit`` of each."""
    categories = list(categories or CATEGORIES)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown ACEBench categories {unknown}; choose from {list(CATEGORIES)}")
    root = resolve_data_dir(data_dir)
    samples = []
    for cat in categories:
        rows = _read_jsonl(root / f"data_normal_{cat}.json")
        truth = {r["id"]: r["ground_truth"] for r in _read_jsonl(root / "possible_answer" / f"data_normal_{cat}.json")}
        for row in rows[:limit] if limit is not None else rows:
            if row["id"] not in truth:
                raise KeyError(f"ACEBench {cat}: no ground truth for id {row['id']}")
            record = {
                "id": row["id"],
                "source": f"acebench/{cat}",
                "system": preamble_with(f"The current time is {row['time']}." if row.get("time") else ""),
                "tools": [_to_tool(f) for f in row["function"]],
                "conversation": _conversation(row["question"]),
                "answer": truth[row["id"]],
            }
            target = {"functions": row["function"], "ground_truth": truth[row["id"]]}
            samples.append(EvalSample("acebench", cat, row["id"], record, target))
    return samples


# ----------------------------------------------------------------------------- checker rules
def strip_index_suffix(name: str) -> str:
    """``market_insight_predict_trends_2`` -> ``market_insight_predict_trends``."""
    return re.sub(r"_\d+$", "", name)


def standardize_string(text: str) -> str:
    """ACEBench/BFCL string normalisation: drop `` ,./-_*^``, lower-case, ``'`` -> ``"``."""
    return re.sub(r"[ \,\.\/\-\_\*\^]", "", text).lower().replace("'", '"')


def _answer_type(answer: Any) -> type | None:
    return None if answer == "" else type(answer)


def _type_check(value: Any, answer: Any, expected: Any, nested: Any) -> dict[str, Any]:
    result = {"valid": True, "is_variable": False, "error_type": "type_error"}
    answer_type = _answer_type(answer)
    is_variable = answer_type is not None and answer_type != expected
    if value == "true":
        value = True
    if value == "false":
        value = False
    if type(value) == expected:  # noqa: E721 - exact type, as the original
        if nested is None:
            result["is_variable"] = is_variable
            return result
        for answer_item in answer:
            ok = True
            if type(answer_item) == list:  # noqa: E721
                for value_item in value:
                    if not _type_check(value_item, answer_item, nested, None)["valid"]:
                        ok = False
                        break
            if ok:
                return {"valid": True, "is_variable": is_variable}
        result["valid"] = False
    if answer_type is not None and (type(value) == answer_type or answer == value):  # noqa: E721
        result["is_variable"] = True
        return result  # keeps valid=False when the nested check above failed
    result["valid"] = False
    return result


def _string_check(value: str, answer: Any) -> bool:
    return standardize_string(answer) in standardize_string(value)


def _list_check(value: list, answer: list) -> bool:
    std_value = [standardize_string(v) if type(v) == str else v for v in value]  # noqa: E721
    std_answer = [standardize_string(a) if type(a) == str else a for a in answer]  # noqa: E721
    return std_value == std_answer


def _dict_check(value: Any, answer: dict) -> bool:
    if not isinstance(value, dict) or len(value) != len(answer):
        return False
    for key, item in value.items():
        if item == "true":
            item = True
        if item == "false":
            item = False
        if key not in answer:
            return False
        expected = answer[key]
        if isinstance(expected, dict):
            if not _dict_check(item, expected):
                return False
            continue
        std_item = standardize_string(item) if type(item) == str else item  # noqa: E721
        std_expected = standardize_string(expected) if type(expected) == str else expected  # noqa: E721
        if str(std_expected) not in str(std_item):
            return False
    return True


def _list_dict_check(value: list, answer: list) -> bool:
    if len(value) != len(answer):
        return False
    return all(_dict_check(v, a) for v, a in zip(value, answer))


def _function_check(spec: dict[str, Any] | None, call: dict[str, Any], reference: dict[str, Any]) -> tuple[bool, str]:
    """ACEBench ``simple_function_checker`` for one predicted call against one reference call."""
    if spec is None or "parameters" not in spec:
        raise _CheckerCrash("function spec not found or has no 'parameters'")
    answer = next(iter(reference.values()))
    args = next(iter(call.values()))
    if args == {} and spec["parameters"] == {}:
        return True, ""
    if args == {} or spec["parameters"] == {}:
        return False, "wrong_param"
    if answer == spec["parameters"].get("properties"):
        return True, ""
    if answer == {}:
        return False, "wrong_param"
    name = spec["name"]
    if name not in call:
        return False, "wrong_function_name"
    try:
        details = spec["parameters"]["properties"]
        required = spec["parameters"]["required"]
    except (KeyError, TypeError):
        raise _CheckerCrash(f"spec of {name} lacks properties/required") from None
    for param in required:
        if param not in args:
            return False, "lack_args"
    for param, value in args.items():
        if param not in details or param not in answer:
            return False, "addition_args"
        type_name = details[param].get("type")
        if type_name not in _TYPE:
            raise _CheckerCrash(f"unknown type {type_name!r} for {name}.{param}")
        expected, nested = _TYPE[type_name], None
        if type_name in _NESTED:
            try:
                nested_name = details[param]["items"]["type"]
            except (KeyError, TypeError):
                nested_name = "string" if "string" in type_name else "enum" if "enum" in type_name else "dict"
            if nested_name not in _TYPE:
                raise _CheckerCrash(f"unknown item type {nested_name!r} for {name}.{param}")
            nested = _TYPE[nested_name]
        if type_name == "float" and type(value) == int:  # noqa: E721
            value = float(value)
        checked = _type_check(value, answer[param], expected, nested)
        if not checked["valid"]:
            return False, "type_error"
        if checked["is_variable"]:
            continue
        if expected is dict:
            if not _dict_check(value, answer[param]):
                return False, "value_error"
        elif expected is list and nested is dict:
            if type_name == "objectArray":
                raise _CheckerCrash("objectArray branch of the original raises")
            if not _list_dict_check(value, answer[param]):
                return False, "value_error:list_dict"
        elif expected is str:
            if not _string_check(value, answer[param]):
                return False, "value_error:string"
        elif expected is list:
            if not _list_check(value, answer[param]):
                return False, "value_error:list/tuple"
    return True, ""


def _find_spec(functions: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """First spec whose name is a substring of the reference key (the original's lookup)."""
    for func in functions:
        if func["name"] in key:
            return func
    return None


def normal_checker(functions: list[dict[str, Any]], calls: list[dict[str, Any]],
                   reference: dict[str, Any]) -> tuple[bool, str]:
    """ACEBench ``normal_checker``: ``calls`` is ``[{name: args}]``, ``reference`` one ground
    truth ``{name(_k): args}``. Returns (valid, error_type)."""
    if len(calls) != len(reference):
        return False, "wrong functions number"
    keys = list(reference)
    references = [{strip_index_suffix(k): v} for k, v in reference.items()]
    predicted = Counter(name for call in calls for name in call)
    expected = Counter(name for ref in references for name in ref)
    if predicted != expected:
        return False, "function_mismatch"
    for key, ref in zip(keys, references):
        spec = _find_spec(functions, key)
        ok, error = False, "wrong_function"
        for call in calls:
            if next(iter(call)) == next(iter(ref)):
                ok, error = _function_check(spec, call, ref)
                if ok:
                    break
            else:
                ok, error = False, "wrong_function"
        if not ok:
            return False, error
    return True, ""


def _strip_ws(value: Any) -> Any:
    if isinstance(value, str):
        return "".join(value.split())
    if isinstance(value, list):
        return [_strip_ws(v) for v in value]
    if isinstance(value, dict):
        return {_strip_ws(k): _strip_ws(v) for k, v in value.items()}
    return value


def score(sample: EvalSample, response: str, strip_whitespace: bool = True) -> Verdict:
    """ACEBench verdict for one response; any of several ground truths may match."""
    parsed = classify_response(response)
    if parsed.kind != CALLS:
        return Verdict(False, "wrong_output_format", parsed.reason, unparseable=parsed.kind == UNPARSEABLE)
    calls = to_checker_format(parsed.calls)
    if strip_whitespace:
        calls = _strip_ws(calls)
    truths = sample.target["ground_truth"]
    truths = truths if isinstance(truths, list) else [truths]
    first_error = ""
    for truth in truths:
        try:
            ok, error = normal_checker(sample.target["functions"], calls, truth)
        except _CheckerCrash as err:
            ok, error = False, f"checker_crash: {err}"
        except Exception as err:  # odd model values must fail the sample, not the run
            ok, error = False, f"checker_exception: {type(err).__name__}: {err}"
        if ok:
            return Verdict(True, decoded=calls)
        first_error = first_error or error
    return Verdict(False, first_error.split(":")[0], first_error, calls)


def summarize(per_category: dict[str, dict]) -> dict[str, dict | None]:
    """``atom`` and ``single_turn``: unweighted means (None when a part is missing)."""
    def mean(parts: tuple[str, ...]) -> dict | None:
        if any(p not in per_category for p in parts):
            return None
        return {"accuracy": sum(per_category[p]["accuracy"] for p in parts) / len(parts),
                "total_count": sum(per_category[p]["total_count"] for p in parts)}

    return {"atom": mean(ATOM), "single_turn": mean(SINGLE_TURN)}
