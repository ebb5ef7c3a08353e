"""Report table (golden), chart, the runner with injected generation, and the CLI oracle mode."""
import json

import pytest

from tooln1.eval import report, runner


def _cat(c, n):
    return {"accuracy": c / n, "correct_count": c, "total_count": n}


RESULTS = {
    "model": "tiny",
    "categories": {"bfcl": {"simple": _cat(1, 2), "live_simple": _cat(1, 4), "irrelevance": _cat(3, 4)},
                   "apibank": {"level-1": _cat(2, 3)}},
    "summary": {"bfcl": {"non_live_simple": None, "non_live": None, "live": None, "overall": None,
                         "irrelevance": _cat(3, 4), "live_irrelevance": None},
                "apibank": {"level-1": _cat(2, 3), "level-2": None}},
}

GOLDEN = """\
| Model | L Simple | Irrel. | API-Bank L1 |
|-------|---------:|-------:|------------:|
| tiny  |    25.00 |  75.00 |       66.67 |
| other |      N/A |    N/A |      100.00 |"""


def test_table_golden():
    other = {"model": "other", "categories": {"apibank": {"level-1": _cat(3, 3)}}}
    assert report.format_table([RESULTS, other]) == GOLDEN


def test_category_table_shows_unparseable_apart():
    res = {"model": "tiny", "categories": {"bfcl": {
        "irrelevance": {**_cat(0, 48), "unparseable": 1.0, "unparseable_count": 48},
        "simple": {**_cat(1, 4), "unparseable": 0.25, "unparseable_count": 1}}}}
    old = {"model": "old", "categories": {"apibank": {"level-1": _cat(2, 3)}}}  # written before the count
    assert report.format_categories([res, old]) == """\
| Model | Benchmark | Category    | Accuracy | Correct | Unparseable |
|-------|-----------|-------------|---------:|--------:|------------:|
| tiny  | bfcl      | irrelevance |     0.00 |    0/48 | 48 (100.0%) |
| tiny  | bfcl      | simple      |    25.00 |     1/4 |   1 (25.0%) |
| old   | apibank   | level-1     |    66.67 |     2/3 |         N/A |"""


def test_table_full_columns_order():
    header = report.format_table([RESULTS], drop_empty=False).splitlines()[0]
    names = [c.strip() for c in header.strip("|").split("|")]
    assert names[:7] == ["Model", "Overall", "NL Simple", "NL Multiple", "NL Parallel", "NL Par.Mult.", "Non-Live"]
    assert names[-4:] == ["API-Bank L1", "API-Bank L2", "ACE Atom", "ACE Single-Turn"]


def test_chart_written(tmp_path):
    path = report.plot_categories([RESULTS, {**RESULTS, "model": "b"}], tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_category_and_benchmark_errors():
    with pytest.raises(ValueError, match="belongs to none"):
        runner.load_benchmarks(["apibank"], ["simple"])
    with pytest.raises(ValueError, match="unknown benchmarks"):
        runner.load_benchmarks(["nope"])


def test_evaluate_with_injected_generation(tmp_path):
    """Whole pipeline minus the model: records -> prompts (tiny tokenizer) -> batched fake
    generation -> scoring -> results.json / table.md / accuracy.png."""
    pytest.importorskip("tooln1.data.prompt")
    from tooln1.checkpoints.tiny import load_tiny_tokenizer
    from tooln1.eval.oracle import oracle_response
    from tooln1.eval.samples import EvalSample

    tok = load_tiny_tokenizer()
    answers = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    tools = [{"name": "get_weather", "description": "Weather.",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    samples = [EvalSample("apibank", "level-1", f"s{i}",
                          {"id": f"s{i}", "source": "t", "system": "", "tools": tools,
                           "conversation": [{"role": "user", "content": "Weather in Paris?" + "!" * i}],
                           "answer": answers},
                          {"answers": answers}) for i in range(5)]
    by_prompt = {}
    calls = []

    def fake_generate(model, tokenizer, prompts, n=1, max_new_tokens=64, temperature=0.0):
        calls.append(len(prompts))
        assert temperature == 0.0 and n == 1
        return [[by_prompt[p]] for p in prompts]

    from tooln1.eval.prompting import render_prompts

    prompts = render_prompts([s.record for s in samples], tok)
    for i, (p, s) in enumerate(zip(prompts, samples)):
        by_prompt[p] = oracle_response(s) if i % 2 == 0 else "garbage"
    orig = runner.load_benchmarks
    try:
        runner.load_benchmarks = lambda *a, **k: samples
        res = runner.evaluate(None, tok, benchmarks=["apibank"], batch_size=2, output_dir=tmp_path,
                              generate_fn=fake_generate, log=None, model_name="fake")
    finally:
        runner.load_benchmarks = orig
    assert calls == [2, 2, 1]
    assert res["categories"]["apibank"]["level-1"] == {"accuracy": 0.6, "correct_count": 3, "total_count": 5,
                                                       "unparseable": 0.0, "unparseable_count": 0}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["valid"] for r in saved["samples"]] == [True, False, True, False, True]
    assert [r["unparseable"] for r in saved["samples"]] == [False] * 5  # "garbage" is a text answer, no call
    assert "| Unparseable |" in (tmp_path / "table.md").read_text()
    assert saved["samples"][0]["prompt"].startswith("<|im_start|>system")
    assert "fake" in (tmp_path / "table.md").read_text() and (tmp_path / "accuracy.png").is_file()


def test_score_outputs_length_mismatch():
    with pytest.raises(ValueError, match="outputs"):
        runner.score_outputs([], ["x"])


def test_cli_oracle_mode(tmp_path, capsys):
    pytest.importorskip("bfcl", reason="nvidia-bfcl not installed: pip install --no-deps nvidia-bfcl")
    from tooln1.eval.cli import main

    assert main(["--model", "oracle", "--benchmarks", "bfcl", "--categories", "simple,live_simple",
                 "--limit", "5", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| oracle" in out and "100.00" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["categories"]["bfcl"]["simple"]["total_count"] == 5


def test_cli_bad_model_path(tmp_path):
    from tooln1.eval.cli import main

    with pytest.raises(SystemExit, match="no config.json"):
        main(["--model", str(tmp_path / "missing")])


@pytest.mark.parametrize("flag, expected", [([], "float32"), (["--dtype", "bfloat16"], "bfloat16")])
def test_cli_model_dtype_and_compile_cache(tmp_path, tiny_checkpoint, monkeypatch, flag, expected):
    """On CPU the model computes in float32 unless --dtype says otherwise, and --compile-cache
    points JAX's persistent cache at the folder given."""
    import jax

    from tooln1.eval.cli import main

    seen = {}

    def fake_evaluate(model, tokenizer, **kwargs):
        seen["dtype"] = model.config.dtype
        seen["cache"] = jax.config.jax_compilation_cache_dir
        return RESULTS

    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    before = jax.config.jax_compilation_cache_dir
    try:
        assert main(["--model", tiny_checkpoint, "--benchmarks", "bfcl", "--output", str(tmp_path),
                     "--compile-cache", str(tmp_path / "xla"), *flag]) == 0
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert jax.default_backend() == "cpu"
    assert seen == {"dtype": expected, "cache": str(tmp_path / "xla")}
