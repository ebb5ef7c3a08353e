"""Reward rules of docs/design.md §7, one test per rule and kind, plus fuzzing for robustness and speed."""
import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tooln1.reward import KINDS, compute_reward, extract_calls, score_batch

ANSWER = [
    {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}},
    {"name": "convert", "arguments": {"amount": 2.5, "to": "EUR"}},
]
THINK = "<think>I need the weather and a conversion.</think>"


def call_block(payload) -> str:
    return "<tool_call>" + (payload if isinstance(payload, str) else json.dumps(payload)) + "</tool_call>"


def all_kinds(response, answer=ANSWER):
    return {k: compute_reward(response, answer, k) for k in KINDS}


# ---------------------------------------------------------------- binary: each rule of docs/design.md §7

def test_exact_match_with_think_is_one_for_every_kind():
    assert all_kinds(THINK + call_block(ANSWER)) == {
        "binary": 1.0, "format_partial": 1.0, "format_name_partial": 1.0, "binary_no_think": 1.0}


def test_answer_may_be_json_string():
    assert compute_reward(THINK + call_block(ANSWER), json.dumps(ANSWER)) == 1.0


def test_call_order_and_argument_order_are_free():
    swapped = [{"name": "convert", "arguments": {"to": "EUR", "amount": 2.5}},
               {"name": "get_weather", "arguments": {"days": 3, "city": "Paris"}}]
    assert compute_reward(THINK + call_block(swapped), ANSWER) == 1.0


@pytest.mark.parametrize("value", ['"3"', "3.0", "true", "[3]", "null"])
def test_argument_types_are_strict(value):
    text = THINK + call_block(
        '[{"name": "get_weather", "arguments": {"city": "Paris", "days": %s}},'  # noqa: UP031 (JSON braces)
        ' {"name": "convert", "arguments": {"amount": 2.5, "to": "EUR"}}]' % value)
    assert all_kinds(text) == {
        "binary": 0.0, "format_partial": 0.2, "format_name_partial": 0.4, "binary_no_think": 0.0}


def test_multiset_counts_duplicates():
    one = [{"name": "f", "arguments": {}}]
    two = one * 2
    assert compute_reward(THINK + call_block(two), one) == 0.0
    assert compute_reward(THINK + call_block(two), two) == 1.0
    assert compute_reward(THINK + call_block(one), two) == 0.0


def test_last_block_wins():
    wrong = [{"name": "get_weather", "arguments": {"city": "Rome", "days": 3}}]
    assert compute_reward(THINK + call_block(wrong) + call_block(ANSWER), ANSWER) == 1.0
    assert compute_reward(THINK + call_block(ANSWER) + call_block(wrong), ANSWER) == 0.0
    # a later invalid block also wins: the valid earlier one is not used
    assert compute_reward(THINK + call_block(ANSWER) + "<tool_call>[oops</tool_call>", ANSWER) == 0.0


def test_blocks_are_lazy_and_non_overlapping():
    # "<tool_call>A</tool_call> junk </tool_call>": the match is A, the stray close tag is ignored
    text = THINK + call_block(ANSWER) + " junk </tool_call>"
    assert compute_reward(text, ANSWER) == 1.0
    # an unclosed trailing opening tag does not hide the earlier complete block
    assert compute_reward(THINK + call_block(ANSWER) + "<tool_call>[", ANSWER) == 1.0
    # nested opening tag: content runs from the first opening to the first closing tag
    assert compute_reward(THINK + "<tool_call><tool_call>" + json.dumps(ANSWER) + "</tool_call>", ANSWER) == 0.0


def test_payload_is_stripped_and_may_span_lines():
    payload = "\n  " + json.dumps(ANSWER, indent=2) + "\n\t "
    assert compute_reward(THINK + call_block(payload), ANSWER) == 1.0


def test_no_block_is_zero_even_for_empty_answer():
    assert all_kinds(THINK + "No tool fits.", []) == {
        "binary": 0.0, "format_partial": 0.2, "format_name_partial": 0.2, "binary_no_think": 0.0}


def test_empty_calls_match_only_empty_answer():
    assert compute_reward(THINK + "<tool_call>[]</tool_call>", []) == 1.0
    assert compute_reward(THINK + "<tool_call>[]</tool_call>", "[]") == 1.0
    assert all_kinds(THINK + "<tool_call>[]</tool_call>", ANSWER)["format_name_partial"] == 0.2
    assert all_kinds(THINK + call_block(ANSWER), [])["format_name_partial"] == 0.2


def test_invalid_json_is_zero():
    assert all_kinds(THINK + "<tool_call>[{'name': 'f'}]</tool_call>") == {
        "binary": 0.0, "format_partial": 0.2, "format_name_partial": 0.2, "binary_no_think": 0.0}


def test_json_string_payload_is_decoded_once_more():
    assert compute_reward(THINK + call_block(json.dumps(json.dumps(ANSWER))), ANSWER) == 1.0
    # ...but only once
    assert compute_reward(THINK + call_block(json.dumps(json.dumps(json.dumps(ANSWER)))), ANSWER) == 0.0
    assert compute_reward(THINK + call_block('"not json"'), ANSWER) == 0.0


def test_single_dict_counts_as_one_call():
    one = {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}
    assert compute_reward(THINK + call_block(one), [one]) == 1.0
    assert compute_reward(THINK + call_block(json.dumps(one)), [one]) == 1.0  # string -> dict -> [dict]


@pytest.mark.parametrize("missing", ["<think>", "</think>"])
def test_think_tags_required_for_binary_only(missing):
    text = (THINK + call_block(ANSWER)).replace(missing, "")
    assert all_kinds(text) == {
        "binary": 0.0, "format_partial": 0.8, "format_name_partial": 0.8, "binary_no_think": 1.0}


def test_think_only_presence_is_checked_not_order():
    text = call_block(ANSWER) + "</think> afterwards <think>"
    assert compute_reward(text, ANSWER) == 1.0
    text = "<think>" + call_block(ANSWER).replace("[", "[ ", 1) + "</think>"  # tags around the call
    assert compute_reward(text, ANSWER) == 1.0


@pytest.mark.parametrize("payload", [
    '{"name": "get_weather"}',                       # no arguments
    '[{"arguments": {}}]',                           # no name
    '[["get_weather", {}]]',                         # item not a dict
    "42", "null", "true", '"[1, 2]"',                # not a list of calls
])
def test_malformed_payloads_are_zero(payload):
    assert all_kinds(THINK + call_block(payload), ANSWER) == {
        "binary": 0.0, "format_partial": 0.2, "format_name_partial": 0.2, "binary_no_think": 0.0}


def test_unhashable_name_is_zero_not_exception():
    calls = [{"name": ["get_weather"], "arguments": {}}, {"name": {"x": 1}, "arguments": {}}]
    assert all_kinds(THINK + call_block(calls))["format_name_partial"] == 0.2


def test_names_match_gives_partial_credit_only_in_name_kind():
    wrong_args = [{"name": "get_weather", "arguments": {"city": "Rome"}},
                  {"name": "convert", "arguments": {}}]
    assert all_kinds(THINK + call_block(wrong_args)) == {
        "binary": 0.0, "format_partial": 0.2, "format_name_partial": 0.4, "binary_no_think": 0.0}
    assert compute_reward(call_block(wrong_args), ANSWER, "format_name_partial") == 0.2


def test_prompt_prefix_is_cut_at_last_assistant_marker():
    # The system prompt mentions <think> and holds a valid example call; only the response counts.
    prompt = ("<|im_start|>system\n<think> </think> <tool_call>" + json.dumps(ANSWER) +
              "</tool_call><|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert compute_reward(prompt + "I will not call anything.", ANSWER) == 0.0
    assert compute_reward(prompt + THINK + call_block(ANSWER), ANSWER) == 1.0


@pytest.mark.parametrize("response", [None, 3, b"<think></think>", ["a"], ""])
def test_non_string_or_empty_responses(response):
    assert compute_reward(response, ANSWER) == 0.0


@pytest.mark.parametrize("answer", ["not json", "{bad", 7, None, [{"name": "f"}], [1, 2]])
def test_malformed_answers_give_zero(answer):
    assert compute_reward(THINK + call_block(ANSWER), answer) == 0.0


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown reward kind"):
        compute_reward(THINK, ANSWER, kind="soft")


def test_extract_calls():
    assert extract_calls(THINK + call_block(ANSWER)) == ANSWER
    assert extract_calls("nothing") is None


# ---------------------------------------------------------------- reference re-implementation

def _reference_binary(solution_str: str, answer: list) -> float:
    """A literal, regex-based transcription of the rules (slow but obviously right)."""
    matches = list(re.finditer(r"<tool_call>(.*?)</tool_call>", solution_str, flags=re.DOTALL))
    if not matches:
        return 0.0
    try:
        result = json.loads(matches[-1].group(1).strip())
        if isinstance(result, str):
            result = json.loads(result)
    except (json.JSONDecodeError, RecursionError, ValueError):
        return 0.0
    if isinstance(result, dict):
        result = [result]
    if "<think>" not in solution_str or "</think>" not in solution_str:
        return 0.0
    if not isinstance(result, list) or not all(
            isinstance(i, dict) and "name" in i and "arguments" in i for i in result):
        return 0.0
    if not result or not answer:
        return float(len(result) == len(answer))
    from collections import Counter
    try:
        a = Counter((i["name"], json.dumps(i["arguments"], sort_keys=True)) for i in result)
        b = Counter((i["name"], json.dumps(i["arguments"], sort_keys=True)) for i in answer)
    except TypeError:
        return 0.0
    return float(a == b)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, width=16)
    | st.text("ab\"{}[]<>\\/", max_size=4),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from("xyz"), kids, max_size=3),
    max_leaves=8)
calls_st = st.lists(st.fixed_dictionaries(
    {"name": st.sampled_from(["f", "g", "Func Name"]),
     "arguments": st.dictionaries(st.sampled_from("abc"), json_values, max_size=3)}), max_size=3)
pieces = st.sampled_from(["<think>", "</think>", "<tool_call>", "</tool_call>", "[", "]", "{", "}",
                          '"', ",", ":", "\\", " ", "\n", "name", "arguments", '"name"', '"arguments"',
                          "<|im_start|>assistant", "null", "1", "{}", "[]"])


@st.composite
def responses(draw):
    """Random token soup, sometimes around a real (possibly perturbed) call block."""
    answer = draw(calls_st)
    head = "".join(draw(st.lists(pieces, max_size=12)))
    tail = "".join(draw(st.lists(pieces, max_size=12)))
    mode = draw(st.integers(0, 3))
    if mode == 0:
        middle = call_block(answer)
    elif mode == 1:
        middle = call_block(draw(calls_st))
    elif mode == 2:
        middle = call_block(json.dumps(answer))
    else:
        middle = "".join(draw(st.lists(pieces, max_size=20)))
    return head + middle + tail, answer


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
def test_fuzz_binary_agrees_with_reference_and_values_in_range(case):
    text, answer = case
    if "<|im_start|>assistant" in text:
        text_ref = text[text.rfind("<|im_start|>assistant"):]
    else:
        text_ref = text
    values = {k: compute_reward(text, answer, k) for k in KINDS}
    assert values["binary"] == _reference_binary(text_ref, answer)
    assert values["binary"] in (0.0, 1.0) and values["binary_no_think"] in (0.0, 1.0)
    assert values["format_partial"] in (0.0, 0.2, 0.8, 1.0)
    assert any(abs(values["format_name_partial"] - v) < 1e-9 for v in (0.0, 0.2, 0.4, 0.8, 1.0))
    assert values["binary"] <= values["binary_no_think"]


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200),
       st.one_of(st.text(max_size=50), st.lists(st.dictionaries(st.text(max_size=3), json_values))))
def test_fuzz_arbitrary_text_never_raises(text, answer):
    for kind in KINDS:
        assert 0.0 <= compute_reward(text, answer, kind) <= 1.0


def _bench_reward():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "bench" / "reward.py"
    spec = importlib.util.spec_from_file_location("bench_reward", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ADVERSARIAL_1MB = _bench_reward().ADVERSARIAL_1MB  # timed by tools/bench/reward.py


@pytest.mark.parametrize("name", sorted(ADVERSARIAL_1MB))
def test_one_megabyte_inputs_decode_little(name, monkeypatch):
    """The work on a 1 MB response is bounded: one linear scan for the last block, and at most
    MAX_BLOCK_CHARS + 8 × the answer's JSON handed to the JSON decoder (counted, not timed)."""
    import tooln1.reward as reward

    decoded = []
    real = reward._loads
    monkeypatch.setattr(reward, "_loads", lambda text: (decoded.append(len(text)), real(text))[1])
    text = ADVERSARIAL_1MB[name]
    assert len(text) >= 900_000
    values = [compute_reward(text, ANSWER, k) for k in KINDS]
    limit = reward.MAX_BLOCK_CHARS + 8 * len(json.dumps(ANSWER))
    assert sum(decoded) <= len(KINDS) * 2 * limit, (name, decoded[:4])  # a string payload is decoded twice
    assert values[0] == (1.0 if name == "long_think" else 0.0)


# ---------------------------------------------------------------- batch scorer

def test_score_batch_rewards_and_diagnostics():
    wrong_args = [{"name": "get_weather", "arguments": {"city": "Rome", "days": 3}},
                  {"name": "convert", "arguments": {"amount": 2.5, "to": "EUR"}}]
    responses_ = [THINK + call_block(ANSWER), call_block(ANSWER), THINK + call_block(wrong_args),
                  THINK + "<tool_call>{oops</tool_call>", "plain text"]
    rewards, diag = score_batch(responses_, [ANSWER] * 4 + [json.dumps(ANSWER)])
    assert rewards.dtype == np.float32
    np.testing.assert_array_equal(rewards, [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(diag["format_ok"], [1, 0, 1, 1, 0])
    np.testing.assert_array_equal(diag["json_ok"], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(diag["names_match"], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(diag["full_match"], [1, 1, 0, 0, 0])
    rewards, _ = score_batch(responses_, [ANSWER] * 5, kind="format_name_partial")
    np.testing.assert_allclose(rewards, [1.0, 0.8, 0.4, 0.2, 0.0], atol=1e-6)


def test_score_batch_checks_lengths_and_kind():
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        score_batch(["a", "b"], [ANSWER])
    with pytest.raises(ValueError, match="unknown reward kind"):
        score_batch(["a"], [ANSWER], kind="nope")
    rewards, diag = score_batch([], [])
    assert rewards.shape == (0,) and diag["full_match"].shape == (0,)


def test_score_batch_multiprocess_matches_serial():
    from tooln1.reward import shutdown_pools

    responses_ = [THINK + call_block(ANSWER), "x", THINK + "<tool_call>[]</tool_call>"] * 4
    answers = [ANSWER, ANSWER, []] * 4
    serial = score_batch(responses_, answers, kind="format_partial")
    try:
        parallel = score_batch(responses_, answers, kind="format_partial", num_workers=2)
    finally:
        shutdown_pools()
    np.testing.assert_array_equal(serial[0], parallel[0])
    for key in serial[1]:
        np.testing.assert_array_equal(serial[1][key], parallel[1][key])
