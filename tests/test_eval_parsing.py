"""The model response -> checker call list step (tooln1.eval.parsing)."""
import pytest

from tooln1.eval.parsing import (
    CALLS,
    NO_CALL,
    UNPARSEABLE,
    ToolCallParseError,
    classify_response,
    extract_tool_calls,
    parse_for_checker,
    render_tool_calls,
)


def test_first_block_list_payload():
    text = ('<think>x</think><tool_call>[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]</tool_call>'  # noqa: E501 (test data)
            '<tool_call>[{"name": "ignored", "arguments": {}}]</tool_call>')
    assert parse_for_checker(text) == [{"a": {"x": 1}}, {"b": {}}]


def test_single_object_string_payload_and_string_arguments():
    assert extract_tool_calls('<tool_call>{"name": "a", "arguments": {"x": "y"}}</tool_call>') == [
        {"name": "a", "arguments": {"x": "y"}}]
    assert parse_for_checker('<tool_call>"[{\\"name\\": \\"a\\", \\"arguments\\": {}}]"</tool_call>') == [{"a": {}}]
    assert parse_for_checker('<tool_call>[{"name": "a", "arguments": "{\\"k\\": 2}"}]</tool_call>') == [{"a": {"k": 2}}]


def test_unclosed_block_at_end_and_trailing_special_tokens():
    assert parse_for_checker('<tool_call>[{"name": "a", "arguments": {}}]<|im_end|>') == [{"a": {}}]


def test_empty_list_is_a_valid_empty_call_list():
    assert parse_for_checker("<tool_call>[]</tool_call>") == []


@pytest.mark.parametrize("text", [
    "", "no tags at all", "<tool_call></tool_call>", "<tool_call>{not json}</tool_call>",
    "<tool_call>42</tool_call>", '<tool_call>["a"]</tool_call>', '<tool_call>[{"arguments": {}}]</tool_call>',
    '<tool_call>[{"name": 3, "arguments": {}}]</tool_call>', '<tool_call>[{"name": "a", "arguments": [1]}]</tool_call>',
    "<tool_call>" + "[" * 100_000 + "</tool_call>", None,
])
def test_garbage_raises_parse_error_only(text):
    with pytest.raises(ToolCallParseError):
        extract_tool_calls(text)


def test_render_round_trip():
    calls = [{"name": "f.g", "arguments": {"a": [1, "x"], "b": {"c": None}}}]
    text = render_tool_calls(calls)
    assert text.startswith("<think>") and extract_tool_calls(text) == calls


@pytest.mark.parametrize("text, kind", [
    ('<think>x</think><tool_call>[{"name": "a", "arguments": {}}]</tool_call>', CALLS),
    ("<think>x</think><tool_call>[]</tool_call>", CALLS),
    ("<tool_call>{}</tool_call>", CALLS),
    ("<tool_call> [ { } ] </tool_call>", CALLS),
    ("<think>none fits</think> I cannot help with that.", NO_CALL),
    ("Sorry, no tool computes this.<|im_end|>", NO_CALL),
    ("<think>a</think> 42", NO_CALL),
    ("<think>x</think><tool_call>[{]</tool_call>", UNPARSEABLE),
    ("Here you go: <tool_call>not json</tool_call> done", UNPARSEABLE),
    ('<tool_call>[{"arguments": {}}]</tool_call>', UNPARSEABLE),
    ("", UNPARSEABLE),
    (" \n\t<|im_end|>", UNPARSEABLE),
    ("<think>the user asks for", UNPARSEABLE),
    ("<think>x</think>", UNPARSEABLE),
    ("\x00" * 100, UNPARSEABLE),
    ("?!...", UNPARSEABLE),
    (None, UNPARSEABLE),
])
def test_classify_response(text, kind):
    parsed = classify_response(text)
    assert parsed.kind == kind
    assert (parsed.calls is not None) == (kind == CALLS)
    assert bool(parsed.reason) == (kind != CALLS)
