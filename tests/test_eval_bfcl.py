"""BFCL v3 through the official checker: oracle answers pass, wrong calls and garbage fail."""
import builtins
import collections

import pytest

from tooln1.eval import bfcl

try:
    bfcl.require_checker()
    HAVE_BFCL = True
except bfcl.MissingBFCLError:
    HAVE_BFCL = False
needs_bfcl = pytest.mark.skipif(not HAVE_BFCL, reason=f"nvidia-bfcl not installed: {bfcl.INSTALL_HINT}")

# Entries whose own possible answer the official checker rejects (data inconsistencies: a name
# or parameter in the answer that the function doc lacks, answers in types the Java converter can
# never produce, a HashMap answer stored as a plain dict). Listed in docs/evaluation.md.
OFFICIAL_REJECTS = {
    "simple_363", "java_36", "java_64", "java_65", "javascript_41", "live_simple_106-63-0",
    "live_simple_112-68-0", "live_multiple_507-149-4", "live_multiple_862-181-3", "live_multiple_964-207-0",
}
COUNTS = {"simple": 400, "java": 100, "javascript": 50, "multiple": 200, "parallel": 200, "parallel_multiple": 200,
          "live_simple": 258, "live_multiple": 1053, "live_parallel": 16, "live_parallel_multiple": 24,
          "irrelevance": 240, "live_irrelevance": 882}


@pytest.fixture(scope="module")
def samples():
    return bfcl.load_samples()


@needs_bfcl
def test_all_categories_load_with_official_counts(samples):
    assert collections.Counter(s.category for s in samples) == COUNTS


@needs_bfcl
def test_oracle_scores_all_but_the_official_rejects(samples):
    from tooln1.eval.oracle import oracle_response

    failed = {s.id for s in samples if not bfcl.score(s, oracle_response(s)).valid}
    assert failed == OFFICIAL_REJECTS


@needs_bfcl
def test_wrong_calls_score_zero(samples):
    from tooln1.eval.oracle import bfcl_oracle_calls
    from tooln1.eval.parsing import render_tool_calls

    for s in samples:
        if s.category in bfcl.IRRELEVANCE:
            wrong = render_tool_calls([{"name": "any_tool", "arguments": {"q": 1}}])
        else:
            calls = bfcl_oracle_calls(s)
            calls[0] = {**calls[0], "name": calls[0]["name"] + "_wrong"}
            wrong = render_tool_calls(calls)
        assert not bfcl.score(s, wrong).valid, s.id


@needs_bfcl
def test_wrong_argument_value_fails():
    s = bfcl.load_samples(["simple"], limit=1)[0]
    from tooln1.eval.oracle import bfcl_oracle_calls
    from tooln1.eval.parsing import render_tool_calls

    calls = bfcl_oracle_calls(s)
    key = next(iter(calls[0]["arguments"]))
    calls[0]["arguments"][key] = 987654321
    verdict = bfcl.score(s, render_tool_calls(calls))
    assert not verdict.valid and verdict.error_type


GARBAGE = ["", "<think>hmm", "<tool_call>[{]</tool_call>", '<tool_call>[{"name": "x"}]</tool_call>',
           '<tool_call>[{"name": "calculate_triangle_area", "arguments": {"base": {"a": [1, {}]}, "height": null}}]</tool_call>',  # noqa: E501 (test data)
           '<tool_call>[{"name": "calculate_triangle_area", "arguments": {"base": "\\u0000", "height": [[[]]]}}]</tool_call>',  # noqa: E501 (test data)
           "\x00" * 1000]
UNPARSEABLE = {"", "<think>hmm", "<tool_call>[{]</tool_call>", "\x00" * 1000}  # the others decode to calls


@needs_bfcl
@pytest.mark.parametrize("category", list(COUNTS))
def test_garbage_fails_without_crashing(category):
    """Garbage is wrong in every category, irrelevance included: an output that does not parse
    is not a declined call."""
    for s in bfcl.load_samples([category], limit=3):
        for text in GARBAGE:
            verdict = bfcl.score(s, text)
            assert not verdict.valid, (s.id, text[:40])
            assert verdict.unparseable == (text in UNPARSEABLE), (s.id, text[:40])


@needs_bfcl
def test_irrelevance_no_call_and_empty_list_are_correct():
    s = bfcl.load_samples(["irrelevance"], limit=1)[0]
    assert bfcl.score(s, "<think>none fits</think> I cannot help.").valid
    assert bfcl.score(s, "No function here computes that.").valid
    for empty in ("[]", "{}", "[{}]"):  # BFCL's is_empty_output forms
        assert bfcl.score(s, f"<think>none</think><tool_call>{empty}</tool_call>").valid, empty
    assert not bfcl.score(s, '<tool_call>[{"name": "f", "arguments": {}}]</tool_call>').valid


@needs_bfcl
@pytest.mark.parametrize("text", ["<think>none fits</think>\n<tool_call>[{\"name\": \"f\", </tool_call>",
                                  "<tool_call>not json</tool_call> I cannot help.", "", "  \n<|im_end|>",
                                  "<think>the user wants", "<think>x</think>", "...", "\x00\x01"])
def test_irrelevance_unparseable_is_a_flagged_failure(text):
    verdict = bfcl.score(bfcl.load_samples(["irrelevance"], limit=1)[0], text)
    assert not verdict.valid and verdict.unparseable
    assert verdict.error_type == "irrelevance_error:unparseable"


@needs_bfcl
def test_irrelevance_garbage_scores_zero_and_is_counted_apart():
    """48 garbage outputs on irrelevance: 0% correct, all 48 unparseable (they read as 100%
    when a failed parse counted as "no call")."""
    from tooln1.eval.runner import score_outputs

    samples = bfcl.load_samples(["irrelevance"], limit=48)
    garbage = ["", "<tool_call>[{]</tool_call>", "<think>hmm", "\x00" * 10] * 12
    res = score_outputs(samples, garbage)
    entry = res["categories"]["bfcl"]["irrelevance"]
    assert entry == {"accuracy": 0.0, "correct_count": 0, "total_count": 48,
                     "unparseable": 1.0, "unparseable_count": 48}
    assert all(row["unparseable"] and not row["valid"] for row in res["samples"])
    clean = score_outputs(samples, ["<think>no tool fits</think> Sorry, I cannot do that."] * 48)
    assert clean["categories"]["bfcl"]["irrelevance"]["accuracy"] == 1.0
    assert clean["categories"]["bfcl"]["irrelevance"]["unparseable_count"] == 0


@needs_bfcl
def test_ast_category_text_answer_is_wrong_but_not_unparseable():
    s = bfcl.load_samples(["simple"], limit=1)[0]
    prose = bfcl.score(s, "<think>ok</think> The area is 25.")
    assert not prose.valid and not prose.unparseable and prose.error_type == "ast_decoder:decoder_failed"
    broken = bfcl.score(s, "<tool_call>[{]</tool_call>")
    assert not broken.valid and broken.unparseable


@needs_bfcl
def test_java_prompt_functions_are_strings_and_input_untouched():
    s = bfcl.load_samples(["java"], limit=5)
    for sample in s:
        for tool in sample.record["tools"]:
            assert tool["description"].endswith("Java 8 SDK syntax.")
            assert all(p["type"] == "string" for p in tool["parameters"]["properties"].values())
        assert any(p["type"] != "string" for f in sample.target["functions"]
                   for p in f["parameters"]["properties"].values())


def test_language_hints_python():
    funcs = [{"name": "f", "description": "d",
              "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}}}}]
    out = bfcl.prepare_functions(funcs, "simple")
    assert out[0]["description"] == "d Note that the provided function is in Python 3 syntax."
    assert out[0]["parameters"]["properties"]["x"]["type"] == "integer" and funcs[0]["description"] == "d"


def test_missing_package_error_names_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("bfcl"):
            raise ImportError("No module named 'bfcl'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(bfcl.MissingBFCLError, match="pip install --no-deps nvidia-bfcl"):
        bfcl.require_checker()
    with pytest.raises(bfcl.MissingBFCLError, match="pip install --no-deps nvidia-bfcl"):
        bfcl.data_dir()


def _acc(a, n):
    return {"accuracy": a, "total_count": n}


def test_summary_formulas():
    per = {"simple": _acc(0.9, 400), "java": _acc(0.6, 100), "javascript": _acc(0.3, 50),
           "multiple": _acc(0.8, 200), "parallel": _acc(0.7, 200), "parallel_multiple": _acc(0.5, 200),
           "live_simple": _acc(0.5, 258), "live_multiple": _acc(0.6, 1053),
           "live_parallel": _acc(0.25, 16), "live_parallel_multiple": _acc(0.5, 24)}
    s = bfcl.summarize(per)
    assert s["non_live_simple"]["accuracy"] == pytest.approx((0.9 + 0.6 + 0.3) / 3)
    assert s["non_live"]["accuracy"] == pytest.approx(((0.9 + 0.6 + 0.3) / 3 + 0.8 + 0.7 + 0.5) / 4)
    live = (0.5 * 258 + 0.6 * 1053 + 0.25 * 16 + 0.5 * 24) / (258 + 1053 + 16 + 24)
    assert s["live"]["accuracy"] == pytest.approx(live)
    assert s["overall"]["accuracy"] == pytest.approx((s["non_live"]["accuracy"] + live) / 2)
    assert s["irrelevance"] is None
    partial = bfcl.summarize({"simple": _acc(1.0, 10), "live_simple": _acc(1.0, 10)})
    assert partial["non_live"] is None and partial["live"] is None and partial["overall"] is None
    # The paper's Tool-N1-7B: overall = mean of non-live and live.
    assert bfcl._unweighted([_acc(0.8925, 1), _acc(0.8038, 1)])["accuracy"] == pytest.approx(0.84815)
