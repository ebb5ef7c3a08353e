"""Loaders (xLAM, ToolACE) on schema fixtures with broken rows, the ToolACE call parser, mixing."""
import json
import os

import pytest

from tooln1.data import (
    CallParseError,
    add_irrelevance,
    load_records,
    load_records_with_stats,
    mix,
    parse_calls,
    read_records,
    toolace_records,
    train_val_split,
    validate_record,
    write_records,
)
from tooln1.data.prompt import DEFAULT_PREAMBLE

FIX = os.path.join(os.path.dirname(__file__), "fixtures")


# ---------------------------------------------------------------- ToolACE call parser

@pytest.mark.parametrize("text, expected", [
    ('[Weather API(city="Oslo", days=3)]', [{"name": "Weather API", "arguments": {"city": "Oslo", "days": 3}}]),
    ("[a.b(x=1), c_d()]", [{"name": "a.b", "arguments": {"x": 1}}, {"name": "c_d", "arguments": {}}]),
    ('[f(xs=[1, [2, 3]], d={"k": [True, None], "n": {"m": -1.5}})]',
     [{"name": "f", "arguments": {"xs": [1, [2, 3]], "d": {"k": [True, None], "n": {"m": -1.5}}}}]),
    ("""[f(s="a, b) ] [ ( {", t='it\\'s "x"', u="=")]""",
     [{"name": "f", "arguments": {"s": "a, b) ] [ ( {", "t": "it's \"x\"", "u": "="}}]),
    ("[f(a=true, b=false, c=null, d=(1, 2))]",
     [{"name": "f", "arguments": {"a": True, "b": False, "c": None, "d": [1, 2]}}]),
    ("[Get 3-Day Forecast|v2?(q='x'), Stock/Info(s='y',)]",
     [{"name": "Get 3-Day Forecast|v2?", "arguments": {"q": "x"}}, {"name": "Stock/Info", "arguments": {"s": "y"}}]),
    ("  [ f( a = 1 ) ,  g(b='2') ]  ", [{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {"b": "2"}}]),
    ("[f(date=2023-05-01, city=New York)]", [{"name": "f", "arguments": {"date": "2023-05-01", "city": "New York"}}]),
    ('[f(d={1: "a"})]', [{"name": "f", "arguments": {"d": {"1": "a"}}}]),
])
def test_parse_calls(text, expected):
    assert parse_calls(text) == expected


@pytest.mark.parametrize("text", [
    '[f(a="x"]', "f(a=1)", "[f(a=1)", "[]", "[f(a=1) g(b=2)]", "[f(1, 2)]", "[f(a=1, a=2)]",
    '[f(a="unterminated)]', "[f(a=[1, 2)]", "[f(a=__import__('os').system('x'))]", "[f(a=print(1))]",
    "[f(a=1)] trailing", "[(a=1)]", "[f(a=)]",
])
def test_parse_calls_rejects(text):
    with pytest.raises(CallParseError):
        parse_calls(text)


def test_parse_calls_never_evaluates(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(CallParseError):
        parse_calls(f"[f(a=open({str(marker)!r}, 'w'))]")
    assert not marker.exists()


# ---------------------------------------------------------------- xLAM

def test_xlam_fixture_counts_and_records():
    records, stats = load_records_with_stats(f"xlam:{FIX}/xlam_sample.json")
    assert (stats.raw_rows, stats.raw_single, stats.raw_multi) == (9, 9, 0)
    assert (stats.kept_single, stats.kept_multi) == (5, 0)
    assert dict(stats.dropped) == {"unparseable_call": 1, "unparseable_tools": 1,
                                   "empty_conversation": 1, "unknown_tool": 1}
    assert [r["id"] for r in records] == ["xlam-0", "xlam-1", "xlam-2", "xlam-3", "xlam-4"]
    for r in records:
        validate_record(r)
        assert r["source"] == "xlam" and r["system"] == DEFAULT_PREAMBLE
        assert len(r["conversation"]) == 1 and r["conversation"][0]["role"] == "user"
    assert records[1]["answer"] == [{"name": "get_weather", "arguments": {"city": "Rome"}},
                                    {"name": "web_search", "arguments": {"q": "pasta, fresh", "limit": 3}}]
    assert records[2]["answer"][0]["arguments"]["opts"] == {"a": [1, 2.5, None, True]}
    assert records[3]["answer"] == []
    assert [t["name"] for t in records[4]["tools"]] == ["web_search", "get_weather"]


def test_xlam_broken_lines_are_counted_not_fatal():
    records, stats = load_records_with_stats(f"xlam:{FIX}/xlam_broken_lines.jsonl")
    assert len(records) == 3 and stats.raw_rows == 5 and dict(stats.dropped) == {"unreadable_row": 2}


def test_parquet_input_goes_through_datasets(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = json.load(open(f"{FIX}/xlam_sample.json"))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    records, stats = load_records_with_stats(f"xlam:{tmp_path}/x.parquet")
    assert stats.kept == 5 and records[0]["answer"] == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]


def test_missing_path_and_bad_spec_errors():
    with pytest.raises(FileNotFoundError, match="data file not found: nope/xlam.json"):
        load_records("xlam:nope/xlam.json")
    with pytest.raises(ValueError, match="bad data spec"):
        load_records("xlam")
    with pytest.raises(ValueError, match="unknown data source kind 'glaive'"):
        load_records(f"glaive:{FIX}/xlam_sample.json")


# ---------------------------------------------------------------- ToolACE

def test_toolace_fixture_counts():
    records, stats = load_records_with_stats(f"toolace:{FIX}/toolace_sample.json")
    assert (stats.raw_rows, stats.raw_single, stats.raw_multi) == (11, 9, 2)
    assert (stats.kept_single, stats.kept_multi) == (4, 1)
    assert dict(stats.dropped) == {"unparseable_tools": 2, "unknown_tool": 2, "unparseable_call": 1,
                                   "no_tool_call": 1, "empty_conversation": 1, "bad_turn": 1}
    assert [r["id"] for r in records] == ["toolace-0-1", "toolace-1-1", "toolace-2-1", "toolace-2-5", "toolace-9-1"]


def test_toolace_records_content():
    records = {r["id"]: r for r in load_records(f"toolace:{FIX}/toolace_sample.json")}
    raw = json.load(open(f"{FIX}/toolace_sample.json"))
    first = records["toolace-0-1"]
    assert first["system"] == raw[0]["system"][: raw[0]["system"].index("invoke:\n") + len("invoke:\n")]
    assert first["system"].endswith("Here is a list of functions in JSON format that you can invoke:\n")
    assert [t["name"] for t in first["tools"]] == ["Weather API", "Stock.Info|v2", "Get 3-Day Forecast"]
    assert first["conversation"] == [{"role": "user", "content": "Weather in Oslo for 3 days?"}]
    assert records["toolace-1-1"]["answer"][1] == {"name": "Get 3-Day Forecast",
                                                    "arguments": {"note": "a, b (c) [d] \"q\" 's' =x"}}
    multi = records["toolace-2-5"]
    assert [t["role"] for t in multi["conversation"]] == ["user", "assistant", "tool", "assistant", "user"]
    # the earlier call step is an assistant message in the <tool_call> format
    assert multi["conversation"][1]["content"] == \
        '<tool_call>[{"name": "Weather API", "arguments": {"city": "Rome"}}]</tool_call>'
    assert multi["answer"] == [{"name": "Stock.Info|v2", "arguments": {"symbols": ["AAPL"]}},
                               {"name": "Weather API", "arguments": {"city": "Paris"}}]


def test_toolace_include_nocall():
    rows = json.load(open(f"{FIX}/toolace_sample.json"))
    records, stats = toolace_records(rows[:1], include_nocall=True)
    assert [r["answer"] for r in records] == [[{"name": "Weather API", "arguments": {"city": "Oslo", "days": 3}}], []]
    assert records[1]["conversation"][-1]["role"] == "tool"


# ---------------------------------------------------------------- synthetic through the same path

def test_synthetic_spec_goes_through_xlam_path():
    records, stats = load_records_with_stats("synthetic:50:7")
    assert stats.kept == 50 and not stats.dropped and records[0]["source"] == "synthetic"
    assert records == load_records("synthetic:50:7")
    assert records != load_records("synthetic:50:8")
    simple = load_records("synthetic-simple:20")
    assert all(len(r["tools"]) == 2 and len(r["answer"]) == 1 for r in simple)


# ---------------------------------------------------------------- transforms and io

def test_irrelevance_augmentation():
    records = load_records(f"xlam:{FIX}/xlam_sample.json")
    out = add_irrelevance(records, fraction=1.0, seed=0)
    extra = out[len(records):]
    # xlam-3 has no answer; xlam-0, -1, -2 call every tool they list; only xlam-4 keeps a tool
    assert [r["id"] for r in extra] == ["xlam-4-irrelevant"]
    assert extra[0]["answer"] == [] and [t["name"] for t in extra[0]["tools"]] == ["web_search"]
    assert add_irrelevance(records, 0.0) == records


def test_mix_ratios_and_determinism():
    a = [{"id": f"a{i}"} for i in range(10)]
    b = [{"id": f"b{i}"} for i in range(4)]
    out = mix({"a": a, "b": b}, {"a": 0.5, "b": 2.0}, seed=1)
    ids = [r["id"] for r in out]
    assert sum(i.startswith("a") for i in ids) == 5 and sum(i.startswith("b") for i in ids) == 8
    assert len(set(i for i in ids if i.startswith("a"))) == 5
    assert out == mix({"a": a, "b": b}, {"a": 0.5, "b": 2.0}, seed=1)
    with pytest.raises(ValueError, match="unknown source"):
        mix({"a": a}, {"c": 1.0})


def test_train_val_split_is_seeded_and_disjoint():
    records = [{"id": i} for i in range(100)]
    train, val = train_val_split(records, val_fraction=0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in val})
    assert (train, val) == train_val_split(records, val_fraction=0.1, seed=3)
    assert val != train_val_split(records, val_fraction=0.1, seed=4)[1]
    assert len(train_val_split(records, val_size=7)[1]) == 7


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_write_read_roundtrip(tmp_path, ext):
    records = load_records(f"toolace:{FIX}/toolace_sample.json") + load_records("synthetic:30")
    path = str(tmp_path / f"train.{ext}")
    write_records(records, path)
    assert read_records(path) == records
    assert load_records(f"prepared:{path}") == records


def test_validate_record_names_the_field():
    record = load_records("synthetic:1")[0]
    with pytest.raises(ValueError, match="field 'answer'"):
        validate_record({**record, "answer": [{"name": "f"}]})
    with pytest.raises(ValueError, match=r"conversation\[0\]"):
        validate_record({**record, "conversation": [{"role": "narrator", "content": "x"}]})


def test_prepare_data_cli(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "prepare_data", os.path.join(os.path.dirname(__file__), "..", "tools", "prepare_data.py"))
    prepare_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_data)
    summary = prepare_data.main([
        "--source", f"xlam:{FIX}/xlam_sample.json", "--source", f"toolace:{FIX}/toolace_sample.json",
        "--source", "synthetic:40", "--out", str(tmp_path), "--format", "jsonl", "--val-size", "5",
        "--ratio", "synthetic=0.5"])
    out = capsys.readouterr().out
    assert "toolace" in out and "unparseable_tools" in out and "no_tool_call" in out
    assert summary["sources"]["toolace"] == {"raw_rows": 11, "raw_single": 9, "raw_multi": 2, "kept_single": 4,
                                             "kept_multi": 1, "kept_trajectories": 0,
                                             "dropped": {"unparseable_tools": 2, "unknown_tool": 2,
                                                         "unparseable_call": 1, "no_tool_call": 1,
                                                         "empty_conversation": 1, "bad_turn": 1}}
    assert summary["train"] + summary["validation"] == 5 + 5 + 20 and summary["validation"] == 5
    train = read_records(str(tmp_path / "train.jsonl"))
    assert len(train) == 25 and {r["source"] for r in train} == {"xlam", "toolace", "synthetic"}
    assert json.load(open(tmp_path / "stats.json"))["train"] == 25


def test_prepare_data_warns_on_an_empty_validation_split(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "prepare_data", os.path.join(os.path.dirname(__file__), "..", "tools", "prepare_data.py"))
    prepare_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_data)
    summary = prepare_data.main(["--source", "synthetic-tiny:20", "--out", str(tmp_path), "--format", "jsonl"])
    err = capsys.readouterr().err
    assert summary["validation"] == 0  # 2% of 20 rounds to 0
    assert "warning: the validation split is empty (20 examples × --val-fraction 0.02)" in err


def test_fixture_files_match_their_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixtures", os.path.join(FIX, "make_fixtures.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert json.load(open(f"{FIX}/xlam_sample.json")) == gen.xlam
    assert json.load(open(f"{FIX}/toolace_sample.json")) == gen.toolace


# ---------------------------------------------------------------- parser round trip (property)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet="ab ,()[]{}'\"=\\\n:é", max_size=8),
    lambda kids: (st.lists(kids, max_size=3)
                  | st.dictionaries(st.text("xyz_", min_size=1, max_size=3), kids, max_size=3)),
    max_leaves=6)
_calls = st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(["f", "Weather API", "a.b.c", "Get 3-Day Forecast", "Stock|v2?", "x/y"]),
    "arguments": st.dictionaries(st.sampled_from(["a", "b_c", "x1", "long_name", "_k"]), _values, max_size=4),
}), min_size=1, max_size=3)


@settings(max_examples=100, deadline=None)
@given(_calls)
def test_parse_calls_round_trips_python_repr(calls):
    text = "[" + ", ".join(
        f"{c['name']}(" + ", ".join(f"{k}={v!r}" for k, v in c["arguments"].items()) + ")" for c in calls) + "]"
    assert parse_calls(text) == calls
