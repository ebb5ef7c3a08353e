"""Synthetic xLAM-schema generator: schema, determinism, coverage of JSON types, simple mode."""
import json

import pytest

from tooln1.data import generate_xlam_rows, xlam_records
from tooln1.data.synthetic import TEMPLATES
from tooln1.reward import compute_reward


def _json_types(value, out):
    out.add(type(value).__name__)
    if isinstance(value, list):
        for v in value:
            _json_types(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _json_types(v, out)


@pytest.fixture(scope="module")
def rows():
    return generate_xlam_rows(2000, seed=0)


def test_schema_is_xlam(rows):
    assert len(rows) == 2000
    for i, row in enumerate(rows):
        assert set(row) == {"id", "query", "answers", "tools"} and row["id"] == i
        assert isinstance(row["query"], str) and row["query"]
        tools, answers = json.loads(row["tools"]), json.loads(row["answers"])
        names = [t["name"] for t in tools]
        assert len(names) == len(set(names)) >= 2
        assert all({"name", "description", "parameters"} <= set(t) for t in tools)
        assert all(a["name"] in names and isinstance(a["arguments"], dict) for a in answers)
    records, stats = xlam_records(rows, "synthetic")
    assert stats.kept == 2000 and not stats.dropped


def test_deterministic_and_prefix_stable(rows):
    assert generate_xlam_rows(2000, seed=0) == rows
    assert generate_xlam_rows(100, seed=0) == rows[:100]
    assert generate_xlam_rows(100, seed=1) != rows[:100]


def test_full_mode_coverage(rows):
    answers = [json.loads(r["answers"]) for r in rows]
    n_tools = [len(json.loads(r["tools"])) for r in rows]
    assert len(TEMPLATES) >= 30
    assert {a["name"] for ans in answers for a in ans} == {t.name for t in TEMPLATES}
    irrelevant = sum(ans == [] for ans in answers) / len(rows)
    parallel = sum(len(ans) > 1 for ans in answers) / len(rows)
    assert 0.07 < irrelevant < 0.13 and 0.15 < parallel < 0.25
    assert min(n_tools) == 2 and max(n_tools) >= 5
    types = set()
    for ans in answers:
        for call in ans:
            for v in call["arguments"].values():
                _json_types(v, types)
    assert types == {"str", "int", "float", "bool", "list", "dict", "NoneType"}


def test_simple_mode_is_verbatim_and_easy():
    rows = generate_xlam_rows(500, seed=3, simple=True)
    for row in rows:
        calls = json.loads(row["answers"])
        assert len(calls) == 1 and len(json.loads(row["tools"])) == 2
        assert len(row["query"]) < 80
        for value in calls[0]["arguments"].values():
            assert isinstance(value, (str, int, float)) and not isinstance(value, bool)
            assert str(value) in row["query"], (value, row["query"])
    assert generate_xlam_rows(50, seed=3, simple=True, irrelevant_fraction=1.0)[0]["answers"] == "[]"


def test_oracle_response_gets_full_reward():
    for row in generate_xlam_rows(200, seed=5):
        text = "<think>easy</think><tool_call>" + row["answers"] + "</tool_call>"
        assert compute_reward(text, row["answers"]) == 1.0


def test_large_n_is_a_deterministic_extension_of_small_n():
    """10 000 rows: distinct ids, mostly distinct queries, and row i does not depend on n (a bigger
    spec extends a smaller one) — so scaling n up changes nothing already generated."""
    rows = generate_xlam_rows(10_000, seed=0)
    assert len(rows) == 10_000 and len({r["id"] for r in rows}) == 10_000
    assert len({r["query"] for r in rows}) > 8_000
    assert generate_xlam_rows(100, seed=0) == rows[:100] and generate_xlam_rows(100, seed=1) != rows[:100]


def test_rejects_negative_n():
    with pytest.raises(ValueError, match="n=-1"):
        generate_xlam_rows(-1)


def test_tiny_mode_is_a_small_closed_task():
    from tooln1.data import load_records

    rows = generate_xlam_rows(200, seed=0, tiny=True)
    assert generate_xlam_rows(200, seed=0, tiny=True) == rows
    names, values = set(), set()
    for row in rows:
        tools, answers = json.loads(row["tools"]), json.loads(row["answers"])
        assert len(tools) == 1 and len(answers) == 1 and answers[0]["name"] == tools[0]["name"]
        (value,) = answers[0]["arguments"].values()
        assert value in row["query"]
        names.add(answers[0]["name"])
        values.add(value)
    assert len(names) == 3 and len(values) == 8
    records = load_records("synthetic-tiny:5:1")
    assert len(records) == 5 and all(r["source"] == "synthetic" for r in records)
