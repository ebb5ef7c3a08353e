"""The training loop end to end on the tiny model: SFT -> GRPO -> export, and kill/resume.

One uninterrupted run (the reference) and one run killed twice (mid-SFT, then after the first GRPO
step) and resumed; the resumed run must end with bit-identical parameters and per-step metrics, and
must have seen exactly the same records in the same order (nothing skipped, nothing repeated).
All runs use the same tiny shapes on one CPU device and a shared persistent compilation cache, so
the later runs compile (almost) nothing.
"""
import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SFT_STEPS, GRPO_STEPS = 2, 3
TIMING = ("time/", "perf/", "val/seconds", "sft/step_seconds", "sft/tokens_per_s", "sft/mfu")


def make_config(workdir, model_path, cache_dir, **over):
    spec = importlib.util.spec_from_file_location("cfg_quickstart_t", ROOT / "configs" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.workdir = str(workdir)
    c.compile_cache_dir = str(cache_dir)
    c.model.path = model_path
    c.model.tiny.enabled = False
    c.mesh.update(data=1, fsdp=1, tensor=1, num_devices=0)
    c.data.sources = "synthetic-simple:40:3"
    c.data.val_size = 4
    c.data.max_prompt_tokens = 640
    c.sft.update(steps=SFT_STEPS, batch_size=4, max_seq_len=672)
    c.sft.optimizer.learning_rate = 1e-3
    c.grpo.update(steps=GRPO_STEPS, batch_size=2, group_size=4, num_mini_batches=2, max_response_tokens=16,
                  prompt_bucket=640)
    c.grpo.optimizer.learning_rate = 1e-3
    c.eval.update(every=2, batch_size=4, max_new_tokens=16)
    c.checkpoint.update(every=1, keep=2, async_save=True)
    c.log.update(progress=False, data_ids=True)
    c.update_from_flattened_dict(over)  # dotted keys, e.g. {"grpo.steps": 2}
    return c


def read_jsonl(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def last_by_step(rows, phase):
    """Per-step rows of a phase, keeping the last write of each step (a resumed run redoes steps)."""
    out = {}
    for r in rows:
        if r.get("phase") == phase:
            out[r["step"]] = r
    return out


def params_of(model):
    from flax import nnx

    from tooln1.checkpointing import flatten

    flat, _ = flatten(nnx.state(model, nnx.Param))
    return {k: np.asarray(v) for k, v in flat.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint):
    from tooln1.train import Trainer

    base = tmp_path_factory.mktemp("train")
    cache = base / "jax_cache"
    ref = Trainer(make_config(base / "full", tiny_checkpoint, cache))
    ref_summary = ref.run()
    killed = []
    for kill in (1, 2, 0):  # killed after SFT step 1; after SFT step 2 + GRPO step 1; then to the end
        t = Trainer(make_config(base / "resumed", tiny_checkpoint, cache, **{"debug.kill_after_steps": kill}))
        killed.append((t.run(), t))
    return {"ref": (ref_summary, ref), "resumed": killed, "base": base}


def test_end_to_end_metrics_and_export(runs, tiny_tokenizer):
    import torch
    import transformers

    import tooln1

    summary, trainer = runs["ref"]
    assert summary["sft_steps"] == SFT_STEPS and summary["grpo_steps"] == GRPO_STEPS and not summary["killed"]
    assert 0.0 <= summary["val_before_grpo"] <= 1.0 and 0.0 <= summary["val_after_grpo"] <= 1.0
    assert summary["loss_agg"] == {"sft": "token-mean", "grpo": "token-mean"}
    rows = read_jsonl(pathlib.Path(summary["workdir"]) / "metrics.jsonl")
    grpo = last_by_step(rows, "grpo")
    assert sorted(grpo) == list(range(1, GRPO_STEPS + 1))
    needed = ["reward/mean", "reward/std", "reward/format_ok", "reward/json_ok", "reward/names_match",
              "reward/full_match", "loss/kl", "loss/entropy", "loss/clip_frac", "optim/grad_norm",
              "optim/learning_rate", "response/length_mean", "response/length_min", "response/length_max",
              "perf/tokens_per_s", "perf/mfu", "time/sample", "time/score", "time/update"]
    for step, r in grpo.items():
        assert r["loss_agg"] == "token-mean"
        for k in needed:
            assert k in r and math.isfinite(r[k]), (step, k, r.get(k))
        assert 1 <= r["response/length_min"] <= r["response/length_mean"] <= r["response/length_max"] <= 16
        assert r["optim/skipped"] == 0 and r["perf/mfu"] > 0
    sft = last_by_step(rows, "sft")
    assert sorted(sft) == [1, 2] and all(math.isfinite(r["sft/loss"]) for r in sft.values())
    assert any("val/accuracy" in r for r in rows if r.get("phase") == "GRPO")  # eval.every=2
    assert list(pathlib.Path(summary["workdir"]).glob("events.out.tfevents.*"))

    # The export loads in tooln1 and in transformers, with the trained weights.
    out = summary["export_dir"]
    final = params_of(trainer.final_model)
    loaded = tooln1.load_model(out)
    again = params_of(loaded)
    assert again.keys() == final.keys()
    for k in final:
        np.testing.assert_array_equal(again[k], final[k], err_msg=k)
    ids = np.asarray([tiny_tokenizer.encode("<|im_start|>user\nweather in Paris<|im_end|>")], np.int32)
    ours = np.asarray(loaded(ids))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids).long()).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-4)
    assert transformers.AutoTokenizer.from_pretrained(out).encode("<tool_call>") == tiny_tokenizer.encode("<tool_call>")


def test_kill_and_resume_is_bit_exact(runs):
    ref_summary, ref = runs["ref"]
    (s1, _), (s2, _), (s3, t3) = runs["resumed"]
    assert s1["killed"] and s2["killed"] and not s3["killed"]
    assert s1["sft_steps"] == 1 and s2["grpo_steps"] == 1 and s3["grpo_steps"] == GRPO_STEPS

    # Same final parameters, bit for bit.
    a, b = params_of(ref.final_model), params_of(t3.final_model)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # Same per-step metrics (timings aside) and the same validation rewards.
    rows_a = read_jsonl(pathlib.Path(ref_summary["workdir"]) / "metrics.jsonl")
    rows_b = read_jsonl(pathlib.Path(s3["workdir"]) / "metrics.jsonl")
    for phase in ("sft", "grpo"):
        ma, mb = last_by_step(rows_a, phase), last_by_step(rows_b, phase)
        assert ma.keys() == mb.keys()
        for step in ma:
            clean = lambda r: {k: v for k, v in r.items() if not k.startswith(TIMING)}  # noqa: E731
            assert clean(ma[step]) == clean(mb[step]), (phase, step)
    assert s3["val_before_grpo"] == ref_summary["val_before_grpo"]
    assert s3["val_after_grpo"] == ref_summary["val_after_grpo"]

    # The records seen: the resumed run's log, killed steps included, is exactly the reference's —
    # each step once, in order (a kill right after a checkpoint redoes nothing).
    ids_a = [(r["phase"], r["step"], r["ids"]) for r in read_jsonl(pathlib.Path(ref_summary["workdir"]) / "data_ids.jsonl")]
    ids_b = [(r["phase"], r["step"], r["ids"]) for r in read_jsonl(pathlib.Path(s3["workdir"]) / "data_ids.jsonl")]
    assert ids_b == ids_a
    assert [s for p, s, _ in ids_a] == [1, 2, 1, 2, 3]
    grpo_ids = [i for p, _, ids in ids_a if p == "grpo" for i in ids]
    assert len(grpo_ids) == len(set(grpo_ids))  # within an epoch no record repeats


def test_iterator_shares_and_resume():
    from tooln1.data.iterator import BatchIterator

    full = BatchIterator(10, 4, seed=3, process_index=0, process_count=1)
    seen = [full.next().tolist() for _ in range(5)]  # 2 batches per epoch; 3 epochs touched
    assert all(len(b) == 4 for b in seen)
    assert len(set(seen[0] + seen[1])) == 8 and full.get_state() == {"epoch": 2, "batch": 1}
    # Two processes read disjoint halves of the same global batches.
    p0 = BatchIterator(10, 4, seed=3, process_index=0, process_count=2)
    p1 = BatchIterator(10, 4, seed=3, process_index=1, process_count=2)
    for b in seen:
        assert p0.next().tolist() + p1.next().tolist() == b
    # Resume from a saved state continues with the next batch.
    again = BatchIterator(10, 4, seed=3, process_index=0, process_count=1)
    again.set_state({"epoch": 1, "batch": 0})
    assert [again.next().tolist() for _ in range(3)] == seen[2:]
    with pytest.raises(ValueError, match="processes"):
        BatchIterator(10, 3, process_index=0, process_count=2)


def test_sft_examples_mask_exactly_the_reply(tiny_tokenizer):
    from ml_collections import ConfigDict

    from tooln1.data import load_records
    from tooln1.reward import compute_reward
    from tooln1.train import Trainer, sft_response

    recs = load_records("synthetic-simple:3:1")
    t = Trainer.__new__(Trainer)
    t.tokenizer, t.pad_id, t.eos_text = tiny_tokenizer, 0, "<|im_end|>"
    t.cfg = ConfigDict({"sft": {"target": "reason", "think_text": "call {names}", "max_seq_len": 700}})
    ids, attn, lmask = t._sft_examples(recs)
    for i, r in enumerate(recs):
        reply = sft_response(r, "reason", "call {names}")
        assert tiny_tokenizer.decode(ids[i][lmask[i] > 0]) == reply
        assert compute_reward(reply.removesuffix("<|im_end|>"), r["answer"]) == 1.0
        assert attn[i][: int((attn[i] == 0).sum())].sum() == 0  # left padded
    assert sft_response(recs[0], "no_reason", "x").startswith("<tool_call>[")
