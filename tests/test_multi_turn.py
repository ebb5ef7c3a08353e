"""Multi-turn rollouts and training: environments answer each reply, the engine continues the sample.

References: the chat template's own rendering of the conversation (the appended ids), each record's
environment replayed on the decoded replies (observations and rewards), and, for kill and resume, an
uninterrupted run.
"""
from __future__ import annotations

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from tooln1.checkpoints.hf_import import load_model
from tooln1.data.prompt import build_messages, tokenize_prompts
from tooln1.data.synthetic_multi_turn import generate_lookup_records
from tooln1.environments import Step, make_environment
from tooln1.rollout.engine import Engine, EngineConfig
from tooln1.rollout.multi_turn import MultiTurnWorker, TurnTemplate, _turns
from tooln1.rollout.sampling import SamplingConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
EOS = "<|im_end|>"


def test_appended_ids_are_the_chat_templates_user_turn(tiny_tokenizer):
    record = generate_lookup_records(1, seed=3)[0]
    reply = '<think>call find_user</think><tool_call>[{"name": "find_user", "arguments": {"name": "x"}}]</tool_call>'
    observation = '<tool_response>\n{"user_id": 123}\n</tool_response>'
    template = TurnTemplate(tiny_tokenizer)
    ids = (tokenize_prompts([record], tiny_tokenizer)[0] + tiny_tokenizer.encode(reply + EOS, add_special_tokens=False)
           + template.ids(observation))
    messages = build_messages(record) + [{"role": "assistant", "content": reply},
                                         {"role": "user", "content": observation}]
    want = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tiny_tokenizer.decode(ids, skip_special_tokens=False) == want


class EchoEnvironment:
    """Answers every reply with its length until the third; the reward is the replies' lengths mod 2."""

    def __init__(self, record):
        self.record, self.lengths = record, []

    @classmethod
    def from_record(cls, record, limits=None):
        return cls(record)

    def tools(self):
        return self.record["tools"]

    def messages(self):
        return build_messages(self.record)

    def step(self, response):
        self.lengths.append(len(response))
        done = len(self.lengths) == 3
        return Step("" if done else f"<tool_response>\n{len(response)}\n</tool_response>", done)

    def reward(self):
        return float(sum(self.lengths) % 2) if len(self.lengths) == 3 else 0.0


@pytest.fixture(scope="module")
def rollout(tiny_checkpoint, tiny_tokenizer):
    import tooln1.environments.base as base

    records = [{**r, "env": "echo"} for r in generate_lookup_records(3, seed=1)]
    eos = tuple(range(0, 2990, 7))  # a seventh of the vocabulary ends a reply: the random model's turns end
    sampling = SamplingConfig(num_samples=2, max_new_tokens=12, temperature=1.0, eos_ids=eos,
                              pad_id=tiny_tokenizer.pad_token_id or 0, prompt_buckets=(512,))
    engine = Engine(load_model(tiny_checkpoint), EngineConfig(num_slots=4, page_size=16, prefill_chunk=256))
    worker = MultiTurnWorker(engine, tiny_tokenizer, sampling, max_turns=3, max_tokens=100)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(base.KINDS, "echo", f"{__name__}:EchoEnvironment")
        return records, worker, worker.run(records, jax.random.key(0))


def test_trajectories_hold_the_environments_answers_and_their_rewards(rollout):
    records, worker, out = rollout
    batch = out.out
    assert batch.sampled is not None and batch.tokens.shape == (6, 100)
    continued = 0
    for row in range(6):
        n = int(batch.mask[row].sum())
        tokens, sampled = batch.tokens[row, :n], batch.sampled[row, :n].astype(bool)
        assert sampled[0] and (batch.logprobs[row, :n][~sampled] == 0).all()
        edges = np.flatnonzero(np.diff(np.concatenate([[0], sampled.astype(np.int8), [0]])))
        runs = list(zip(edges[::2], edges[1::2]))
        env = EchoEnvironment(records[row // 2])
        for k, (a, b) in enumerate(runs):
            last = k == len(runs) - 1
            if last and out.diagnostics["cut"][row]:
                break  # the length cap ended this reply: the environment never saw it
            step = env.step(worker._text(tokens[a:b]))
            if last:
                assert b == n  # nothing inserted after the last reply
                break
            assert not step.done and tokens[b:runs[k + 1][0]].tolist() == worker.template.ids(step.observation)
            continued += 1
        assert out.rewards[row] == env.reward()
        assert out.diagnostics["turns"][row] == len(runs)
    assert continued >= 6, "the test needs trajectories that continue"


def test_turns_split_a_trajectory_at_its_inserted_tokens():
    from tooln1.rollout.engine import Completion

    tokens = np.arange(9, dtype=np.int32)
    sampled = np.array([1, 1, 0, 0, 1, 1, 1, 0, 1], bool)
    done = Completion(tokens, np.zeros(9, np.float32), sampled, "eos")
    assert [t.tolist() for t in _turns(done)] == [[0, 1], [4, 5, 6], [8]]


def test_sft_trains_the_replies_of_an_oracle_trajectory(tiny_tokenizer):
    from tooln1.config import base_config
    from tooln1.training.sft_phase import SFTExamples

    cfg = base_config().sft
    record = generate_lookup_records(1, seed=2)[0]
    examples = SFTExamples(cfg, tiny_tokenizer, 0, EOS)
    prompt, reply, trained = examples.examples([record])[0]
    trained = np.asarray(trained, bool)
    user_id = record["answer"][0]["arguments"]["user_id"]
    text = tiny_tokenizer.decode(reply, skip_special_tokens=False)
    assert text.count("<tool_call>") == 2 and f'"user_id": {user_id}' in text
    inserted = tiny_tokenizer.decode(np.asarray(reply)[~trained], skip_special_tokens=False)
    assert inserted.startswith("\n<|im_start|>user\n<tool_response>") and str(user_id) in inserted
    assert inserted.endswith("<|im_start|>assistant\n")
    assert tiny_tokenizer.decode(np.asarray(reply)[trained], skip_special_tokens=False).count(EOS) == 2
    env = make_environment(record)
    for calls_text in text.split(EOS)[:1]:
        assert not env.step(calls_text).done


def _config(workdir, model_path, cache, **over):
    spec = importlib.util.spec_from_file_location("cfg_qmt", ROOT / "configs" / "quickstart_multi_turn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.workdir, c.compile_cache_dir = str(workdir), str(cache)
    c.model.path, c.model.tiny.enabled = model_path, False
    c.mesh.update(data=1, fsdp=1, tensor=1, num_devices=0)
    c.data.sources, c.data.val_size = "synthetic-lookup:60:1", 4
    c.sft.update(steps=2, batch_size=4)
    c.grpo.update(steps=2, batch_size=2, group_size=4, max_response_tokens=24, max_trajectory_tokens=96)
    c.eval.update(every=0, batch_size=4, max_new_tokens=24)
    c.checkpoint.update(every=1, keep=2)
    c.log.update(progress=False, data_ids=True)
    c.update_from_flattened_dict(over)
    return c


def test_multi_turn_run_resumes_bit_exactly(tmp_path, tiny_checkpoint):
    from flax import nnx
    from test_train import run_killed_after

    from tooln1.training.loop import run_training

    cache = tmp_path / "jax_cache"
    full = run_training(_config(tmp_path / "full", tiny_checkpoint, cache))
    resumed_cfg = _config(tmp_path / "resumed", tiny_checkpoint, cache)
    assert run_killed_after(resumed_cfg, 3) == "after grpo step 1"
    resumed = run_training(resumed_cfg)
    a = jax.tree.leaves(nnx.state(full.model, nnx.Param))
    b = jax.tree.leaves(nnx.state(resumed.model, nnx.Param))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert resumed.summary["val_after_grpo"] == full.summary["val_after_grpo"]
    ids = [line for line in (tmp_path / "full" / "data_ids.jsonl").read_text().splitlines()]
    assert ids == (tmp_path / "resumed" / "data_ids.jsonl").read_text().splitlines()
