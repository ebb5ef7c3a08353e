"""Ground-truth answers rendered as model responses, to test the scoring pipeline end to end.

``oracle_response(sample)`` writes the sample's reference calls in the paper's response format
(``<think>…</think><tool_call>[…]</tool_call>``). Fed through :func:`tooln1.eval.runner.
score_outputs` it should score (near) 100%; whatever fails exposes either a bug in our pipeline
or a case the official checker rejects even for its own answer (see docs/evaluation.md).
``tooln1-eval --model oracle`` runs it from the command line without any model.

BFCL possible answers list acceptable values per parameter; the oracle takes the first one
that is not ``""`` (``""`` marks "may be omitted") and omits the parameter when there is none.
Java / JavaScript values are written as source-code strings, as the prompt asks the model to.
"""
from __future__ import annotations

import json
from typing import Any

from tooln1.eval.acebench import strip_index_suffix
from tooln1.eval.parsing import render_tool_calls
from tooln1.eval.samples import EvalSample

__all__ = ["oracle_response", "bfcl_oracle_calls"]

_NO_CALL = ("<think>None of the given functions fits this request.</think> "
            "I cannot help with that using the given functions.")


def _pick(options: list) -> tuple[bool, Any]:
    """(present, value): first non-empty option of a BFCL option list."""
    for opt in options:
        if opt != "":
            return True, _collapse(opt)
    return False, None


def _collapse(value: Any) -> Any:
    """Nested BFCL answers: dict entries are option lists themselves -> pick recursively."""
    if isinstance(value, dict):
        out = {}
        for key, options in value.items():
            if isinstance(options, list):
                present, picked = _pick(options)
                if present:
                    out[key] = picked
            else:
                out[key] = options
        return out
    if isinstance(value, list):
        return [_collapse(v) for v in value]
    return value


def _java(value: Any, jtype: str, item_type: str | None) -> str:
    if isinstance(value, str):
        return value
    if jtype == "boolean":
        return "true" if value else "false"
    if jtype == "long":
        return f"{int(value)}L"
    if jtype == "float":
        return f"{float(value)}f"
    if jtype in ("Array", "ArrayList"):
        items = ", ".join(_java_item(v, item_type, quote=jtype == "ArrayList") for v in value)
        if jtype == "Array":
            return f"new {_java_elem_type(item_type)}[]{{{items}}}"
        return f"new ArrayList<>(Arrays.asList({items}))"
    if jtype == "HashMap":
        puts = " ".join(f"put({json.dumps(str(k))}, {_java_literal(v)});" for k, v in value.items())
        return f"new HashMap<String, Object>() {{{{ {puts} }}}}"
    return str(value)


def _java_elem_type(item_type: str | None) -> str:
    return {"integer": "int", "String": "String", "boolean": "boolean", "double": "double",
            "float": "float", "long": "long"}.get(item_type or "", "Object")


def _java_item(value: Any, item_type: str | None, quote: bool) -> str:
    """An element of a Java Array/ArrayList as BFCL's converter reads it: it strips one
    character from each end of ArrayList String elements but keeps Array String elements as
    written, so only the former are quoted."""
    if item_type in ("String", "char", None) and isinstance(value, str):
        return json.dumps(value) if quote else value
    if item_type == "long" and not isinstance(value, bool):
        return f"{int(value)}L"
    if item_type == "float" and not isinstance(value, bool):
        return f"{float(value)}f"
    return _java_literal(value)


def _java_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _js(value: Any, jtype: str) -> str:
    if isinstance(value, str):
        return value
    if jtype == "Boolean" or isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def bfcl_oracle_calls(sample: EvalSample) -> list[dict[str, Any]]:
    """The first acceptable call list of a BFCL sample, as ``[{"name", "arguments"}]``."""
    functions = {f["name"]: f for f in sample.target["functions"]}
    calls = []
    for item in sample.target["possible_answer"] or []:
        (name, params), = item.items()
        props = functions.get(name, {}).get("parameters", {}).get("properties", {})
        args = {}
        for key, options in params.items():
            if "" in options and props and key not in props:
                continue  # optional per the answer but absent from the function doc: omit it
            present, value = _pick(options)
            if not present:
                continue
            spec = props.get(key, {})
            if sample.category == "java":
                value = _java(value, spec.get("type", "String"), spec.get("items", {}).get("type"))
            elif sample.category == "javascript":
                value = _js(value, spec.get("type", "String"))
            args[key] = value
        calls.append({"name": name, "arguments": args})
    return calls


def _acebench_calls(sample: EvalSample) -> list[dict[str, Any]]:
    truth = sample.target["ground_truth"]
    first = truth[0] if isinstance(truth, list) else truth
    return [{"name": strip_index_suffix(name), "arguments": args} for name, args in first.items()]


def oracle_response(sample: EvalSample) -> str:
    """The reference answer of ``sample`` written as a model response."""
    if sample.benchmark == "bfcl":
        if sample.target["possible_answer"] is None:  # irrelevance: the right answer is no call
            return _NO_CALL
        return render_tool_calls(bfcl_oracle_calls(sample))
    if sample.benchmark == "apibank":
        return render_tool_calls(sample.target["answers"])
    if sample.benchmark == "acebench":
        return render_tool_calls(_acebench_calls(sample))
    raise ValueError(f"no oracle for benchmark {sample.benchmark!r}")
