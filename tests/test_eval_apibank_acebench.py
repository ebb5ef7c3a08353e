"""API-Bank exact match and ACEBench's checker rules on the real data in ../shared/data."""
import collections
from pathlib import Path

import pytest

from tooln1.eval import acebench, apibank
from tooln1.eval.oracle import oracle_response
from tooln1.eval.parsing import render_tool_calls

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_apibank = pytest.mark.skipif(not (DATA / "apibank").is_dir(),
                                   reason=f"API-Bank data folder {DATA / 'apibank'} absent")
needs_acebench = pytest.mark.skipif(not (DATA / "acebench").is_dir(),
                                    reason=f"ACEBench data folder {DATA / 'acebench'} absent")


@pytest.fixture(scope="module")
def ab_samples():
    return apibank.load_samples(data_dir=DATA / "apibank")


@pytest.fixture(scope="module")
def ace_samples():
    return acebench.load_samples(data_dir=DATA / "acebench")


# ----------------------------------------------------------------------------- API-Bank
@needs_apibank
def test_apibank_oracle_is_perfect(ab_samples):
    assert collections.Counter(s.category for s in ab_samples) == {"level-1": 399, "level-2": 127}
    assert all(apibank.score(s, oracle_response(s)).valid for s in ab_samples)


@needs_apibank
def test_apibank_wrong_calls_and_garbage_fail(ab_samples):
    for s in ab_samples:
        ans = s.target["answers"][0]
        args = dict(ans["arguments"]) or {"x": "y"}
        key = next(iter(args))
        args[key] = str(args[key]) + "_wrong"
        assert not apibank.score(s, render_tool_calls([{**ans, "arguments": args}])).valid
        assert not apibank.score(s, render_tool_calls([{**ans, "name": ans["name"] + "X"}])).valid
        assert not apibank.score(s, render_tool_calls([ans, ans])).valid
        assert not apibank.score(s, "Sure! <tool_call>oops").valid


@needs_apibank
def test_apibank_prompt_record_shape(ab_samples):
    roles = {t["role"] for s in ab_samples for t in s.record["conversation"]}
    assert roles <= {"user", "assistant", "tool"}
    assert not any("Generate API Request" in t["content"] for s in ab_samples for t in s.record["conversation"])
    earlier_calls = [t["content"] for s in ab_samples for t in s.record["conversation"]
                     if "<tool_call>" in t["content"]]
    assert earlier_calls and all(c.startswith("<think>") for c in earlier_calls)


def test_apibank_missing_folder_error_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="API-Bank data folder"):
        apibank.load_samples(data_dir=tmp_path / "nope")


def test_apibank_type_strict():
    from tooln1.eval.samples import EvalSample

    s = EvalSample("apibank", "level-1", "x", {}, {"answers": [{"name": "f", "arguments": {"id": "1"}}]})
    assert apibank.score(s, render_tool_calls([{"name": "f", "arguments": {"id": "1"}}])).valid
    assert not apibank.score(s, render_tool_calls([{"name": "f", "arguments": {"id": 1}}])).valid


# ----------------------------------------------------------------------------- ACEBench
@needs_acebench
def test_acebench_oracle_reproduces_original_checker(ace_samples):
    """With the original's whitespace stripping, perfect answers score atom 283/300 and
    single-turn 178/200 — the numbers the original checker gives (shared/data/README.md)."""
    def correct(strip):
        c = collections.Counter()
        for s in ace_samples:
            c[s.category] += acebench.score(s, oracle_response(s), strip_whitespace=strip).valid
        return c

    stripped = correct(True)
    assert sum(stripped[c] for c in acebench.ATOM) == 283
    assert sum(stripped[c] for c in acebench.SINGLE_TURN) == 178
    kept = correct(False)
    assert sum(kept[c] for c in acebench.ATOM) == 300
    # normal_single_turn_parallel_function_42: an empty list answer for an array of objects
    # fails the original's nested type check whatever the model writes.
    assert sum(kept[c] for c in acebench.SINGLE_TURN) == 199


@needs_acebench
def test_acebench_wrong_calls_and_garbage_fail(ace_samples):
    from tooln1.eval.oracle import _acebench_calls

    for s in ace_samples:
        calls = _acebench_calls(s)
        assert not acebench.score(s, render_tool_calls([{**calls[0], "name": "nope"}] + calls[1:])).valid
        assert not acebench.score(s, render_tool_calls(calls[:-1] or [])).valid
        bad_args = '<tool_call>[{"name": "%s", "arguments": {"a": [[{}]], "b": null}}]</tool_call>' % calls[0]["name"]  # noqa: UP031 (JSON braces)
        for text in ["", "[f(x=1)]", "<tool_call>[{]</tool_call>", bad_args]:
            assert not acebench.score(s, text).valid


def _spec(props, required=()):
    return [{"name": "f", "description": "",
             "parameters": {"type": "object", "properties": props, "required": list(required)}}]


def test_acebench_rules():
    string = _spec({"city": {"type": "string"}}, ["city"])
    # a substring matches
    assert acebench.normal_checker(string, [{"f": {"city": "New York City"}}], {"f": {"city": "new york"}})[0]
    assert not acebench.normal_checker(string, [{"f": {"city": "Boston"}}], {"f": {"city": "new york"}})[0]
    assert not acebench.normal_checker(string, [{"f": {}}], {"f": {"city": "x"}})[0]
    number = _spec({"n": {"type": "integer"}})
    # Top-level numbers get a type check only (the original has no value check for them).
    assert acebench.normal_checker(number, [{"f": {"n": 5}}], {"f": {"n": 7}})[0]
    assert not acebench.normal_checker(number, [{"f": {"n": "5"}}], {"f": {"n": 7}})[0]
    lists = _spec({"xs": {"type": "array", "items": {"type": "string"}}})
    assert acebench.normal_checker(lists, [{"f": {"xs": ["A-b", "c"]}}], {"f": {"xs": ["ab", "C"]}})[0]
    assert not acebench.normal_checker(lists, [{"f": {"xs": ["c", "ab"]}}], {"f": {"xs": ["ab", "c"]}})[0]
    obj = _spec({"o": {"type": "object", "properties": {"a": {"type": "integer"}}}})
    assert acebench.normal_checker(obj, [{"f": {"o": {"a": 15}}}], {"f": {"o": {"a": 5}}})[0]  # str containment
    assert not acebench.normal_checker(obj, [{"f": {"o": {"a": 6}}}], {"f": {"o": {"a": 5}}})[0]
    assert not acebench.normal_checker(obj, [{"f": {"o": {"a": 5, "b": 1}}}], {"f": {"o": {"a": 5}}})[0]
    # Repeated calls: suffixes stripped, counts must match.
    two = {"f_1": {"city": "a"}, "f_2": {"city": "b"}}
    assert acebench.normal_checker(string, [{"f": {"city": "b"}}, {"f": {"city": "a"}}], two)[0]
    assert not acebench.normal_checker(string, [{"f": {"city": "a"}}], two)[0]


def test_acebench_summary_is_unweighted():
    per = {c: {"accuracy": i / 10, "total_count": 50} for i, c in enumerate(acebench.ATOM)}
    per["single_turn_single_function"] = {"accuracy": 0.5, "total_count": 100}
    s = acebench.summarize(per)
    assert s["atom"]["accuracy"] == pytest.approx(sum(range(6)) / 60)
    assert s["single_turn"] is None


@needs_acebench
def test_acebench_records_use_parameters_key_and_chat_turns(ace_samples):
    for s in ace_samples:
        assert all("parameters" in t and "arguments" not in t for t in s.record["tools"])
        assert s.record["conversation"][0]["role"] == "user"
        assert {t["role"] for t in s.record["conversation"]} <= {"user", "assistant"}
