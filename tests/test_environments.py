"""Environments: the single-turn case equals today's scorer, BFCL multi-turn passes BFCL's own checker on
its ground truth, rollouts of one entry keep separate state, misbehaving tools cost one observation."""
import copy
import json
import time
import uuid

import numpy as np
import pytest

from tooln1.data.prompt import build_messages
from tooln1.environments import Step, ToolLimits, make_environment, tool_responses
from tooln1.environments.functions import FunctionEnvironment
from tooln1.eval.parsing import render_tool_calls
from tooln1.reward import score_batch

DONE = "<think>done</think> Done."


def test_observation_is_the_qwen_tool_turn(tiny_tokenizer):
    """A user turn holding tool_responses(...) renders to the same text as the template's tool messages."""
    base = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"}]
    results = ['{"x": 1}', "two\nlines"]
    as_tools = tiny_tokenizer.apply_chat_template(base + [{"role": "tool", "content": r} for r in results],
                                                  tokenize=False, add_generation_prompt=True)
    as_user = tiny_tokenizer.apply_chat_template(base + [{"role": "user", "content": tool_responses(results)}],
                                                 tokenize=False, add_generation_prompt=True)
    assert as_user == as_tools
    assert as_tools.endswith('<tool_response>\n{"x": 1}\n</tool_response>\n<tool_response>\ntwo\nlines\n'
                             "</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_single_turn_rewards_equal_the_scorer_on_quickstart_rows():
    from tooln1.data import load_records

    records = load_records("synthetic-tiny:2000:0")[:300]
    replies = []
    for i, r in enumerate(records):  # right, right without <think>, wrong value, garbage, declined
        calls = r["answer"] if i % 5 in (0, 1) else [{**r["answer"][0], "arguments": {"city": "Nowhere"}}]
        reply = render_tool_calls(calls) if i % 5 != 3 else "<think>hm</think><tool_call>[{"
        replies.append(reply.replace("<think>", "") if i % 5 == 1 else reply if i % 5 != 4 else "<think>no</think>")
    for kind in ("binary", "format_partial"):
        expected, _ = score_batch(replies, [r["answer"] for r in records], kind)
        got = []
        for r, reply in zip(records, replies):
            env = make_environment(r, reward_kind=kind)
            assert env.messages() == build_messages(r) and env.tools() == r["tools"]
            step = env.step(reply)
            assert step == Step("", True, env.reward())
            got.append(env.reward())
        assert np.array_equal(np.asarray(got, np.float32).view(np.uint32), expected.view(np.uint32))
        assert len(set(expected.tolist())) >= 2  # both outcomes occur, so the comparison can fail


# ------------------------------------------------------------------------------------------- BFCL

UNPARSEABLE_GROUND_TRUTH = [f"multi_turn_composite_{i}" for i in
                            (8, 11, 14, 17, 18, 22, 26, 30, 43, 45, 153, 154, 173, 174, 184, 185)]


def _play_oracle(env):
    from tooln1.eval.bfcl_multi_turn import oracle_policy, play

    play(env, oracle_policy(env))
    return env


def _scripted(replies):
    replies = iter(replies)
    return lambda messages, tools: next(replies)


def _bfcl_verdict(env, record) -> bool:
    """BFCL's whole multi_turn_checker on the calls the environment executed (fresh instances)."""
    from bfcl.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    name = f"check_{uuid.uuid4().hex}"
    try:
        return multi_turn_checker(env.decoded_calls(), record["ground_truth"], copy.deepcopy(record["entry"]),
                                  record["category"], name)["valid"]
    finally:  # BFCL keeps its instances in module globals under the model name; drop ours
        for key in [k for k in vars(multi_turn_utils) if k.startswith(name)]:
            del vars(multi_turn_utils)[key]


def test_bfcl_oracle_passes_bfcls_checker_on_every_entry(bfcl_checker):
    """Ground truth through our environment: 984/1000; the 16 failures are exactly the entries whose
    ground truth holds a call string that is not Python (BFCL runs it as an error no call can match),
    and BFCL's own multi_turn_checker gives the same verdict on every one of the 1000 trajectories."""
    from tooln1.environments.bfcl import CATEGORIES, BFCLEnvironment, load_records, parse_call

    records = load_records(CATEGORIES, split="all")
    assert len(records) == 1000
    failing, disagree = [], []
    for record in records:
        env = _play_oracle(BFCLEnvironment.from_record(record, limits=ToolLimits(None)))
        assert env.done
        if env.reward() != 1.0:
            failing.append(record["id"])
        if _bfcl_verdict(env, record) != (env.reward() == 1.0):
            disagree.append(record["id"])
    assert failing == UNPARSEABLE_GROUND_TRUTH
    assert disagree == []
    for record in records:
        if record["id"] in failing:
            with pytest.raises(SyntaxError):
                [parse_call(text) for turn in record["ground_truth"] for text in turn]


def test_bfcl_checker_agrees_when_a_call_is_missing(bfcl_checker):
    """Dropping the last ground-truth call of an entry fails it, for BFCL's checker and for ours alike."""
    from tooln1.environments.bfcl import BFCLEnvironment, load_records
    from tooln1.eval.bfcl_multi_turn import END_OF_TURN, play

    records = load_records(split="all")[::20]
    outcomes = []
    for record in records:
        env = BFCLEnvironment.from_record(record, limits=ToolLimits(None))
        last = max(t for t, turn in enumerate(record["ground_truth"]) if turn)
        script = []
        for turn in range(env.num_turns):
            calls = env.ground_truth_calls(turn)[: -1 if turn == last else None]
            script += ([render_tool_calls(calls)] if calls else []) + [END_OF_TURN]
        play(env, _scripted(script))
        outcomes.append((env.reward() == 1.0, _bfcl_verdict(env, record)))
    assert all(ours == theirs for ours, theirs in outcomes)
    assert sum(not ours for ours, _ in outcomes) >= 0.9 * len(outcomes)


def test_bfcl_parallel_rollouts_of_one_entry_keep_separate_state(bfcl_checker):
    from bfcl.eval_checker.multi_turn_eval import multi_turn_utils

    from tooln1.environments.bfcl import load_records

    record = next(r for r in load_records(split="all") if r["id"] == "multi_turn_base_1")
    globals_before = set(vars(multi_turn_utils))
    envs = [make_environment(record) for _ in range(4)]
    mkdir = render_tool_calls([{"name": "mkdir", "arguments": {"dir_name": "only_in_zero"}}])
    ls = render_tool_calls([{"name": "ls", "arguments": {"a": True}}])
    envs[0].step(mkdir)
    listings = [json.loads(env.step(ls).observation.split("\n")[1])["current_directory_content"] for env in envs]
    assert "only_in_zero" in listings[0]
    assert all("only_in_zero" not in listing and listing == listings[1] for listing in listings[1:])
    assert set(vars(multi_turn_utils)) == globals_before  # nothing left in BFCL's shared globals


def test_bfcl_turns_and_added_functions(bfcl_checker):
    """miss_func: held-back functions are not offered until their (empty) turn announces them."""
    from tooln1.environments.bfcl import load_records

    record = next(r for r in load_records(["multi_turn_miss_func"], split="all"))
    (turn, names), = record["entry"]["missed_function"].items()
    env = make_environment(record, require_think=True)
    assert not set(names) & {t["name"] for t in env.tools()}
    for t in range(int(turn)):
        calls = env.ground_truth_calls(t)
        if calls:
            assert not env.step(render_tool_calls(calls)).done
        step = env.step(DONE)
        assert step.reward == 1.0
    assert step.observation.startswith("<tools>\n") and "I have updated some more functions" in step.observation
    assert set(names) <= {t["name"] for t in env.tools()}
    assert env.messages()[-1] == {"role": "user", "content": step.observation}


def test_bfcl_think_rule_and_cut_episodes(bfcl_checker):
    from tooln1.environments.bfcl import load_records

    record = next(r for r in load_records(split="all") if r["id"] == "multi_turn_base_1")
    strict, lenient = make_environment(record, require_think=True), make_environment(record, require_think=False)
    for env in (strict, lenient):
        for turn in range(env.num_turns):
            env.step(render_tool_calls(env.ground_truth_calls(turn)))
            assert env.reward() == 0.0  # not done yet: a cut trajectory scores as a failed one
            env.step("Done." if turn == 1 else DONE)  # one reply without <think>
    assert (strict.reward(), lenient.reward()) == (0.0, 1.0)
    with pytest.raises(RuntimeError, match="after the episode ended"):
        strict.step(DONE)


# ------------------------------------------------------------------------------- tool limits

def test_misbehaving_tools_cost_one_observation_and_return_promptly():
    def boom():
        raise ValueError("bad input")

    functions = {"boom": boom, "nap": lambda: time.sleep(30), "flood": lambda: "x" * 1_000_000,
                 "fine": lambda: {"ok": 1}}
    tools = [{"name": n, "description": n, "parameters": {"type": "object", "properties": {}}} for n in functions]
    env = FunctionEnvironment([{"role": "user", "content": "go"}], tools, functions, final_tools=["fine"],
                              score=lambda reply: 1.0, limits=ToolLimits(timeout_s=0.5, max_chars=1000))
    start = time.perf_counter()
    step = env.step(render_tool_calls([{"name": n, "arguments": {}} for n in ("boom", "nap", "flood", "nope")]))
    elapsed = time.perf_counter() - start
    assert elapsed < 5  # the sleeping tool was abandoned after its 0.5 s
    blocks = step.observation.split("</tool_response>")[:-1]
    assert len(blocks) == 4 and not step.done
    assert "Error: boom raised ValueError: bad input" in blocks[0]
    assert "Error: nap timed out after 0.5 s" in blocks[1]
    assert len(blocks[2]) < 1100 and "[truncated: 999000 of 1000000 characters left out]" in blocks[2]
    assert "no tool named 'nope'" in blocks[3]
    assert env.step(render_tool_calls([{"name": "fine", "arguments": {}}])) == Step("", True, 1.0)


# --------------------------------------------------------------------------- synthetic lookup

def test_lookup_task_needs_the_id_from_the_first_call():
    from tooln1.data.synthetic_multi_turn import generate_lookup_records

    records = generate_lookup_records(20, seed=3, num_facts=3)
    assert records == generate_lookup_records(20, seed=3, num_facts=3)
    assert len({r["answer"][0]["arguments"]["user_id"] for r in records}) > 5
    for record in records[:5]:
        (name, user_id), = record["directory"].items()
        right, wrong = make_environment(record), make_environment(record)
        for env in (right, wrong):
            step = env.step(render_tool_calls([{"name": "find_user", "arguments": {"name": name}}]))
            assert step.observation == f'<tool_response>\n{{"user_id": {user_id}}}\n</tool_response>'
        final = record["answer"]
        assert right.step(render_tool_calls(final)) == Step("", True, 1.0)
        guess = [{**final[0], "arguments": {"user_id": user_id + 1}}]
        assert wrong.step(render_tool_calls(guess)) == Step("", True, 0.0)
    env = make_environment(records[0])
    assert "no user named 'zed'" in env.step(render_tool_calls([{"name": "find_user", "arguments":
                                                                  {"name": "zed"}}])).observation


def test_careless_teacher_changes_only_its_share_of_final_demonstrations():
    from tooln1.config.schema import DataSection
    from tooln1.config.validation import data_problems
    from tooln1.data.sources import load_source
    from tooln1.data.synthetic_multi_turn import DEFAULT_ID, generate_lookup_records

    careful = generate_lookup_records(400, seed=2)
    careless = generate_lookup_records(400, seed=2, careless=0.6)
    strip = lambda r: {k: v for k, v in r.items() if k != "oracle_calls"}  # noqa: E731
    assert [strip(r) for r in careless] == [strip(r) for r in careful]  # prompts, answers, directories
    assert all(r["oracle_calls"][1] == r["answer"] for r in careful)
    lazy = [r for r in careless if r["oracle_calls"][1] != r["answer"]]
    right_by_chance = sum(r["answer"][0]["arguments"]["user_id"] == DEFAULT_ID for r in careless)
    assert 0.6 * 400 - 40 - right_by_chance < len(lazy) < 0.6 * 400 + 40
    for r in lazy:  # the right tool, the default id, and the environment says it is wrong
        assert r["oracle_calls"][1] == [{"name": r["answer"][0]["name"], "arguments": {"user_id": DEFAULT_ID}}]
        env = make_environment(r)
        env.step(render_tool_calls(r["oracle_calls"][0]))
        assert env.step(render_tool_calls(r["oracle_calls"][1])) == Step("", True, 0.0)
    assert load_source("synthetic", "400:2:0.6", lookup=True)[0] == careless
    with pytest.raises(ValueError, match="careless=1.5"):
        generate_lookup_records(4, careless=1.5)
    problems = lambda spec: data_problems(DataSection(sources=spec), check_paths=True)  # noqa: E731
    assert problems("synthetic-lookup:400:2:0.6") == []
    assert "CARELESS" in problems("synthetic-lookup:400:2:lots")[0]
    assert "CARELESS" in problems("synthetic-lookup:400:2:1.5")[0]
