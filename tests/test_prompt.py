"""Golden tests of the docs/design.md §5 prompt, built here from the literal template text."""
import json
import os

import pytest

from tooln1.data import load_records
from tooln1.data.prompt import (
    DEFAULT_PREAMBLE,
    build_messages,
    filter_by_prompt_length,
    render_prompt,
    system_prompt,
)

TOKENIZER_DIR = os.path.join(os.path.dirname(__file__), "..", "tooln1", "assets", "tiny_tokenizer")
FIX = os.path.join(os.path.dirname(__file__), "fixtures")

# docs/design.md §5, copied line by line (note the trailing spaces).
LITERAL_PREAMBLE = """\
You are an expert in composing functions. You are given a question and a set of possible functions. 
Based on the question, you will need to make one or more function/tool calls to achieve the purpose. 
If none of the function can be used, point it out. If the given question lacks the parameters required by the function,
also point it out. You should only return the function call in tools call sections. Here is a list of functions in JSON format that you can invoke:
"""  # noqa: E501, W291 (the literal preamble: long lines and trailing spaces are the test data)
LITERAL_TOOL_BLOCK = """\
# Tool

Here is a list of functions in JSON format that you can invoke:

<tools>
{TOOLS}
</tools>

In each action step, you MUST: 
1. Think about the reasoning process in the mind and enclosed your reasoning within <think> </think> XML tags.
2. Then, provide a json object with function names and arguments within <tool_call></tool_call> XML tags. i.e., <tool_call>[{"name": <function-name>, "arguments": <args-json-object>}, {"name": <function-name2>, "arguments": <args-json-object2>}, ...]</tool_call>
3. Make sure both the reasoning and the tool call steps are included together in one single reply.
A complete reply example is: <think>To address the query, I need to send the email to Bob and then buy the banana through walmart. </think> <tool_call> [{"name": "email", "arguments": {"receiver": "Bob", "content": "I will bug banana through walmart"}}, {"name": "walmart", "arguments": {"input": "banana"}}]</tool_call>. Please make sure the type of the arguments is correct. 
"""  # noqa: E501, W291 (the literal tool block: long lines and trailing spaces are the test data)

TOOLS = [
    {"name": "get_weather", "description": "Weather \"now\" in a city", "parameters": {"city": {"type": "str"}}},
    {"name": "Stock.Info|v2", "description": "Quotes — ünïcode", "parameters": {}},
]


def expected_system(tools, preamble=LITERAL_PREAMBLE):
    lines = "\n".join(json.dumps({"type": "function", "function": t}) for t in tools)
    return preamble + LITERAL_TOOL_BLOCK.replace("{TOOLS}", lines)


def test_preamble_bytes():
    assert DEFAULT_PREAMBLE == LITERAL_PREAMBLE
    assert DEFAULT_PREAMBLE.count(" \n") == 2 and DEFAULT_PREAMBLE.endswith("invoke:\n")


def test_system_prompt_golden():
    text = system_prompt(TOOLS)
    assert text == expected_system(TOOLS)
    assert '\n{"type": "function", "function": {"name": "get_weather", ' in text
    assert "\\u00fc" in text  # json.dumps default ensure_ascii, as the authors' preprocessing


def test_build_messages_xlam_and_toolace():
    xlam = load_records(f"xlam:{FIX}/xlam_sample.json")[1]
    msgs = build_messages(xlam)
    assert msgs[0] == {"role": "system", "content": expected_system(xlam["tools"])}
    assert msgs[1:] == [{"role": "user", "content": "Weather in Rome and top 3 results for 'pasta, fresh'"}]

    toolace = {r["id"]: r for r in load_records(f"toolace:{FIX}/toolace_sample.json")}["toolace-2-5"]
    msgs = build_messages(toolace)
    raw_system = json.load(open(f"{FIX}/toolace_sample.json"))[2]["system"]
    end = "JSON format that you can invoke:\n"
    preamble = raw_system[: raw_system.index(end) + len(end)]
    assert msgs[0]["content"] == expected_system(toolace["tools"], preamble)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant", "user"]


def test_bad_role_names_record():
    record = load_records("synthetic:1")[0]
    record["conversation"] = [{"role": "narrator", "content": "x"}]
    with pytest.raises(ValueError, match=r"record 'synthetic-0': conversation\[0\].role='narrator'"):
        build_messages(record)


@pytest.fixture(scope="module")
def tokenizer():
    if not os.path.exists(os.path.join(TOKENIZER_DIR, "tokenizer_config.json")):
        pytest.skip("tiny tokenizer asset not built yet")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def test_render_prompt_golden_qwen_template(tokenizer):
    record = load_records(f"toolace:{FIX}/toolace_sample.json")[3]  # the multi-turn step
    raw_system = json.load(open(f"{FIX}/toolace_sample.json"))[2]["system"]
    preamble = raw_system[: raw_system.index("invoke:\n") + len("invoke:\n")]
    expected = (
        "<|im_start|>system\n" + expected_system(record["tools"], preamble) + "<|im_end|>\n"
        "<|im_start|>user\nWeather in Rome?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>[{"name": "Weather API", "arguments": {"city": "Rome"}}]</tool_call><|im_end|>\n'  # noqa: E501 (golden text)
        '<|im_start|>user\n<tool_response>\n{"temp": 20}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n20 degrees.<|im_end|>\n"
        "<|im_start|>user\nAnd Apple stock plus Paris weather?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_prompt(record, tokenizer) == expected


def test_filter_by_prompt_length(tokenizer):
    records = load_records("synthetic:20")
    lengths = [len(tokenizer(render_prompt(r, tokenizer), add_special_tokens=False)["input_ids"]) for r in records]
    cut = sorted(lengths)[9]
    kept, counts = filter_by_prompt_length(records, tokenizer, max_tokens=cut)
    assert counts == {"kept": sum(n <= cut for n in lengths), "prompt_too_long": sum(n > cut for n in lengths)}
    assert kept == [r for r, n in zip(records, lengths) if n <= cut]
    assert filter_by_prompt_length(records, tokenizer)[1] == {"kept": 20, "prompt_too_long": 0}
