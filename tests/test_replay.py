"""ToolACE's multi-step dialogues as trajectories (``toolace-trajectories:``) and their replay environment,
on hand-written dialogues in ToolACE's format (tests/fixtures/make_fixtures.py, ``toolace_multi_turn``)."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

from tooln1.data import add_irrelevance, load_records, load_records_with_stats, read_records, write_records
from tooln1.environments import Step, ToolLimits, make_environment, tool_responses
from tooln1.environments.replay import MAX_STEPS_PER_TURN, ReplayEnvironment
from tooln1.eval.parsing import render_tool_calls

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
SPEC = f"toolace-trajectories:{FIX}/toolace_multi_turn.json"
OSLO = '[{"name": "Weather API", "results": {"temp": 4, "sky": "snow"}}]'
END = "<think>The turn is answered.</think>Here you are."


@pytest.fixture(scope="module")
def records() -> dict[str, dict]:
    return {r["id"]: r for r in load_records(SPEC)}


def call(calls: list[dict], think: bool = True) -> str:
    reply = render_tool_calls(calls)
    return reply if think else reply.split("</think>\n", 1)[1]


def weather(city: str, **more) -> dict:
    return {"name": "Weather API", "arguments": {"city": city, **more}}


def play_recorded(env: ReplayEnvironment, record: dict) -> list:
    """The recorded dialogue played back: each recorded step's calls, then a text reply ending the turn."""
    steps = []
    for turn in record["replay"]:
        for step in turn["steps"]:
            steps.append(env.step(call(step["calls"])))
            if env.done:
                return steps
        steps.append(env.step(END))
    return steps


def test_trajectories_counts_and_drop_reasons():
    """Dialogues with two or more call steps become one trajectory each; a one-step dialogue stays a
    single-turn step; broken ones are dropped under their reason."""
    records, stats = load_records_with_stats(SPEC)
    assert (stats.raw_rows, stats.raw_single, stats.raw_multi) == (8, 4, 4)
    assert (stats.kept_single, stats.kept_multi, stats.kept_trajectories, stats.kept) == (1, 0, 4, 5)
    assert dict(stats.dropped) == {"unanswered_call": 1, "orphan_tool_response": 1, "unknown_tool": 1}
    assert [(r["id"], r.get("env")) for r in records] == [
        ("toolace-0", "toolace_replay"), ("toolace-1", "toolace_replay"), ("toolace-2", "toolace_replay"),
        ("toolace-3-1", None), ("toolace-7", "toolace_replay")]
    # cut into steps as the paper did, the same dialogues give 16 examples (the broken ones too)
    steps, step_stats = load_records_with_stats(f"toolace:{FIX}/toolace_multi_turn.json")
    assert (step_stats.kept, step_stats.kept_trajectories, dict(step_stats.dropped)) == (16, 0, {"unknown_tool": 1})
    # a trajectory's steps are the calls the step records answer, in order
    for dialogue in ("0", "1", "2", "7"):
        trajectory = next(r for r in records if r["id"] == f"toolace-{dialogue}")
        answers = [r["answer"] for r in steps if r["id"].startswith(f"toolace-{dialogue}-")]
        assert [s["calls"] for t in trajectory["replay"] for s in t["steps"]] == answers


def test_trajectory_record_content(records):
    two_turns = records["toolace-1"]
    assert two_turns["conversation"] == [{"role": "user", "content": "Weather in Rome?"}]
    assert two_turns["answer"] == [weather("Rome")]
    assert two_turns["replay"] == [
        {"user": "Weather in Rome?", "steps": [{"calls": [weather("Rome")], "responses": ['{"temp": 20}']}]},
        {"user": "And Apple stock plus Paris weather?", "steps": [
            {"calls": [{"name": "Stock.Info|v2", "arguments": {"symbols": ["AAPL"]}}, weather("Paris")],
             "responses": ['{"AAPL": 190.5}', '{"temp": 15}']}]}]
    asks_back = records["toolace-2"]
    assert asks_back["answer"] == [] and asks_back["replay"][0] == {"user": "What's the weather?", "steps": []}
    assert asks_back["replay"][1]["steps"][-1]["responses"] == []  # the dialogue ends on a call
    assert [t["name"] for t in two_turns["tools"]] == ["Weather API", "Stock.Info|v2", "Get 3-Day Forecast"]


def test_the_recorded_dialogue_replays_to_reward_one(records):
    """Matching calls get the recorded responses, a text reply ends the turn and the next user turn is
    the observation; the conversation reads as the recorded one."""
    record = records["toolace-1"]
    env = make_environment(record)
    assert isinstance(env, ReplayEnvironment) and env.tools() == record["tools"]
    steps = play_recorded(env, record)
    assert [(s.observation, s.done, s.reward) for s in steps] == [
        (tool_responses(['{"temp": 20}']), False, None),
        ("And Apple stock plus Paris weather?", False, 1.0),
        (tool_responses(['{"AAPL": 190.5}', '{"temp": 15}']), False, None),
        ("", True, 1.0)]
    assert env.reward() == 1.0 and env.passed_turns() == [True, True]
    assert [m["role"] for m in env.messages()] == ["system", "user", "assistant", "tool", "assistant", "user",
                                                   "assistant", "tool", "tool", "assistant"]
    for rid in ("toolace-0", "toolace-2", "toolace-7"):
        env = make_environment(records[rid])
        play_recorded(env, records[rid])
        assert env.done and env.reward() == 1.0, rid
    # calls of one step in another order match too (the trainer's multiset rule)
    env = make_environment(record)
    env.step(call([weather("Rome")]))
    env.step(END)
    assert env.step(call([weather("Paris"), {"name": "Stock.Info|v2", "arguments": {"symbols": ["AAPL"]}}])
                    ).observation == tool_responses(['{"AAPL": 190.5}', '{"temp": 15}'])


def test_near_misses_score_zero(records):
    record = records["toolace-0"]
    first, second = (s["calls"] for s in record["replay"][0]["steps"])
    # a wrong argument: an error observation, the recorded step still pending, the turn failed
    env = make_environment(record)
    step = env.step(call([weather("Bergen")]))
    assert (step.observation, step.done) == (
        tool_responses(["Error: no recorded result for this call to 'Weather API'"]), False)
    assert env.messages()[-1] == {"role": "tool", "content": "Error: no recorded result for this call to 'Weather API'"}
    assert env.step(call(first)).observation == tool_responses([OSLO])
    env.step(call(second))
    assert env.step(END) == Step("", True, 0.0) and env.reward() == 0.0
    # the turn ended before its second step
    env = make_environment(record)
    env.step(call(first))
    assert env.step(END).done and env.reward() == 0.0
    # the steps out of order
    env = make_environment(record)
    assert env.step(call(second)).observation.startswith("<tool_response>\nError: no recorded result")
    # a call where the recorded dialogue asked back without one
    asks_back = records["toolace-2"]
    env = make_environment(asks_back)
    env.step(call([weather("Oslo")]))
    assert env.step(END).observation == "Oslo, and quotes for MSFT"
    play = [s["calls"] for s in asks_back["replay"][1]["steps"]]
    env.step(call(play[0]))
    assert env.step(call(play[1])).done and env.passed_turns() == [False, True] and env.reward() == 0.0


def test_the_think_rule_is_selectable(records):
    record = records["toolace-0"]
    for require_think, want in ((True, 0.0), (False, 1.0)):
        env = make_environment(record, require_think=require_think)
        for step in record["replay"][0]["steps"]:
            env.step(call(step["calls"], think=False))
        env.step(END)
        assert env.passed_turns() == [True] and env.reward() == want


def test_episodes_are_separate_capped_and_bounded(records):
    """Samples of one record share nothing; a recorded response is cut to the limit; a turn of
    ``MAX_STEPS_PER_TURN`` replies ends the episode as failed; a cut episode scores 0."""
    record = records["toolace-0"]
    first = record["replay"][0]["steps"][0]["calls"]
    a, b = make_environment(record), make_environment(record)
    a.step(call(first))
    assert len(b.messages()) == 2 and b.step(call(first)).observation == tool_responses([OSLO])
    assert a.reward() == 0.0  # not done yet
    capped = make_environment(record, limits=ToolLimits(max_chars=10))
    assert capped.step(call(first)).observation == tool_responses(
        [f"{OSLO[:10]}\n[truncated: {len(OSLO) - 10} of {len(OSLO)} characters left out]"])
    env = make_environment(record)
    for _ in range(MAX_STEPS_PER_TURN - 1):
        assert not env.step(call([weather("Bergen")])).done
    assert env.step(call([weather("Bergen")])) == Step("", True, 0.0)
    with pytest.raises(RuntimeError, match="toolace-0.*after the episode ended"):
        env.step(END)


def test_malformed_replays_name_the_record(records):
    record = records["toolace-1"]
    unanswered = json.loads(json.dumps(record))
    unanswered["replay"][0]["steps"][0]["responses"] = []
    with pytest.raises(ValueError, match="'toolace-1': only the dialogue's last call step"):
        make_environment(unanswered)
    with pytest.raises(ValueError, match="'toolace-1': 'replay' must be a non-empty list"):
        make_environment({**record, "replay": [{"user": "hi", "steps": [{"calls": []}]}]})


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_trajectories_survive_prepared_files(tmp_path, ext):
    records = load_records(SPEC) + load_records(f"toolace:{FIX}/toolace_sample.json")
    path = str(tmp_path / f"train.{ext}")
    write_records(records, path)
    assert read_records(path) == records
    stats = load_records_with_stats(f"prepared:{path}")[1]
    assert (stats.kept_single, stats.kept_multi, stats.kept_trajectories) == (5, 1, 4)
    # irrelevance copies leave trajectories alone: their later steps need the tools
    assert [r["id"] for r in add_irrelevance(records, 1.0)[len(records):]] == [
        "toolace-3-1-irrelevant", "toolace-0-1-irrelevant", "toolace-1-1-irrelevant", "toolace-2-1-irrelevant",
        "toolace-9-1-irrelevant"]


def test_prepare_data_counts_trajectories(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "prepare_data", os.path.join(os.path.dirname(__file__), "..", "tools", "prepare_data.py"))
    prepare_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_data)
    summary = prepare_data.main(["--source", SPEC, "--out", str(tmp_path), "--format", "jsonl", "--val-size", "1"])
    assert summary["sources"]["toolace-trajectories"] == {
        "raw_rows": 8, "raw_single": 4, "raw_multi": 4, "kept_single": 1, "kept_multi": 0, "kept_trajectories": 4,
        "dropped": {"unanswered_call": 1, "orphan_tool_response": 1, "unknown_tool": 1}}
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("source"))
    row = next(line for line in lines if line.startswith("toolace-trajectories "))
    assert header.split()[-2:] == ["traj", "dropped"]
    assert row.split()[1:] == ["8", "4", "4", "|", "5", "1", "0", "4", "3"]
    assert any("orphan_tool_response" in line and line.split()[2] == "1" for line in lines)
    written = read_records(str(tmp_path / "train.jsonl")) + read_records(str(tmp_path / "validation.jsonl"))
    assert sorted(r["id"] for r in written if r.get("env") == "toolace_replay") == [
        "toolace-0", "toolace-1", "toolace-2", "toolace-7"]


def test_fixture_file_matches_its_generator():
    spec = importlib.util.spec_from_file_location("make_fixtures", os.path.join(FIX, "make_fixtures.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert json.load(open(f"{FIX}/toolace_multi_turn.json")) == gen.toolace_multi_turn
