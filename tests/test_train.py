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

    from tooln1.checkpoints.train_state import flatten

    flat, _ = flatten(nnx.state(model, nnx.Param))
    return {k: np.asarray(v) for k, v in flat.items()}


class Killed(Exception):
    """Raised where a kill -9 would have stopped the process: right after a step's checkpoint is on disk."""


def run_killed_after(cfg, steps):
    """`run_training` stopped after ``steps`` steps (over all phases) of this process, as a kill would."""
    from tooln1.training.loop import run_training
    from tooln1.training.phase import Phase

    done = []
    end_step = Phase.end_step

    def end_step_then_kill(self, *args):
        end_step(self, *args)
        done.append(self.name)
        if len(done) == steps:
            self.checkpoints.close()  # the save is on disk, as it would be at a kill after it
            raise Killed(f"after {self.name} step {self.step}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Phase, "end_step", end_step_then_kill)
        with pytest.raises(Killed) as killed:
            run_training(cfg)
    return str(killed.value)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint):
    from tooln1.training.loop import run_training

    base = tmp_path_factory.mktemp("train")
    cache = base / "jax_cache"
    ref = run_training(make_config(base / "full", tiny_checkpoint, cache))
    resumed = make_config(base / "resumed", tiny_checkpoint, cache)
    kills = [run_killed_after(resumed, 1),  # killed after SFT step 1
             run_killed_after(resumed, 2)]  # then after SFT step 2 and GRPO step 1
    return {"ref": ref, "kills": kills, "resumed": run_training(resumed), "base": base}


def test_end_to_end_metrics_and_export(runs, tiny_tokenizer):
    import torch
    import transformers

    import tooln1

    run = runs["ref"]
    summary = run.summary
    assert summary["sft_steps"] == SFT_STEPS and summary["grpo_steps"] == GRPO_STEPS
    # The validation rewards are the greedy binary reward of the validation prompts, recomputed here
    # independently with tooln1.generate on the final policy, and the values logged in metrics.jsonl.
    from tooln1.data import render_prompt
    from tooln1.reward import compute_reward

    val = run.context.val_records
    texts = tooln1.generate(run.model, tiny_tokenizer, [render_prompt(r, tiny_tokenizer) for r in val],
                            max_new_tokens=16, eos_ids=run.context.eos_ids)
    rewards = [compute_reward(t[0], r["answer"]) for t, r in zip(texts, val)]
    assert summary["val_after_grpo"] == pytest.approx(np.mean(rewards))
    logged = {r["phase"]: r["val/accuracy"] for r in read_jsonl(pathlib.Path(summary["workdir"]) / "metrics.jsonl")
              if "val/accuracy" in r}
    assert logged["before GRPO"] == summary["val_before_grpo"] and logged["after GRPO"] == summary["val_after_grpo"]
    assert summary["loss_agg"] == {"sft": "token-mean", "grpo": "token-mean"}
    rows = read_jsonl(pathlib.Path(summary["workdir"]) / "metrics.jsonl")
    grpo = last_by_step(rows, "grpo")
    assert sorted(grpo) == list(range(1, GRPO_STEPS + 1))
    needed = ["reward/mean", "reward/std", "reward/format_ok", "reward/json_ok", "reward/names_match",
              "reward/full_match", "loss/kl", "loss/entropy", "loss/clip_frac", "optim/grad_norm",
              "optim/learning_rate", "response/length_mean", "response/length_min", "response/length_max",
              "perf/tokens_per_s", "perf/mfu", "time/sample", "time/score", "time/update", "time/rollout_device",
              "time/rollout_prefill"]
    for step, r in grpo.items():
        assert r["loss_agg"] == "token-mean"
        for k in needed:
            assert k in r and math.isfinite(r[k]), (step, k, r.get(k))
        assert 0 < r["time/rollout_prefill"] <= r["time/rollout_device"]  # every step prefills its prompts
        assert 1 <= r["response/length_min"] <= r["response/length_mean"] <= r["response/length_max"] <= 16
        assert r["optim/skipped"] == 0 and r["perf/mfu"] > 0
        assert 0 <= r["loss/sampler_gap"] <= r["loss/sampler_gap_max"] < 1e-4  # the engine decodes the policy's weights
        # FLOPs of the update: old + reference forwards and forward+backward (num_mini_batches=2, so not
        # on-policy), over 2 packed rows of [prompt 640, 4 responses × 16] (share_prompt, G=4).
        c = run.model.config
        n = sum(x.size for x in params_of(run.model).values())
        n -= 0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size  # the embedding lookup is free
        seq = 640 + 4 * 16
        forward = (2 * n + 4 * c.num_layers * c.num_heads * c.head_dim * seq) * 2 * seq
        assert r["perf/update_tflops"] == pytest.approx(5 * forward / 1e12, rel=1e-6)
    sft = last_by_step(rows, "sft")
    assert sorted(sft) == [1, 2] and all(math.isfinite(r["sft/loss"]) for r in sft.values())
    assert any("val/accuracy" in r for r in rows if r.get("phase") == "GRPO")  # eval.every=2
    assert list(pathlib.Path(summary["workdir"]).glob("events.out.tfevents.*"))
    curves = pathlib.Path(summary["workdir"]) / "curves.png"
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curves.stat().st_size > 10_000

    # The export loads in tooln1 and in transformers, with the trained weights.
    out = summary["export_dir"]
    final = params_of(run.model)
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
    ref, resumed = runs["ref"], runs["resumed"]
    ref_summary, s3 = ref.summary, resumed.summary
    assert runs["kills"] == ["after sft step 1", "after grpo step 1"] and s3["grpo_steps"] == GRPO_STEPS

    # Same final parameters, bit for bit.
    a, b = params_of(ref.model), params_of(resumed.model)
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
    # each step once, in order (a kill right after a checkpoint redoes nothing), and so are the metrics.
    ids_a = [(r["phase"], r["step"], r["ids"])
             for r in read_jsonl(pathlib.Path(ref_summary["workdir"]) / "data_ids.jsonl")]
    ids_b = [(r["phase"], r["step"], r["ids"]) for r in read_jsonl(pathlib.Path(s3["workdir"]) / "data_ids.jsonl")]
    assert ids_b == ids_a
    assert [s for p, s, _ in ids_a] == [1, 2, 1, 2, 3]
    grpo_ids = [i for p, _, ids in ids_a if p == "grpo" for i in ids]
    assert len(grpo_ids) == len(set(grpo_ids))  # within an epoch no record repeats
    assert len(rows_b) == len(rows_a)
    assert [(r["phase"], r["step"]) for r in rows_b] == [(r["phase"], r["step"]) for r in rows_a]

    # The sampled texts logged (log.rollouts = 2 a step): the same rows, the killed step's not repeated.
    texts_a, texts_b = (read_jsonl(pathlib.Path(s["workdir"]) / "rollouts.jsonl") for s in (ref_summary, s3))
    assert texts_b == texts_a
    assert [(r["phase"], r["step"], r["sample"]) for r in texts_a] == [
        ("grpo", step, g) for step in range(1, GRPO_STEPS + 1) for g in range(2)]
    assert all(r["response"] and r["reward"] in (0.0, 1.0) and r["id"] in grpo_ids for r in texts_a)


def _tree(workdir):
    """Every file under a workdir with its size and modification time."""
    return {str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in workdir.rglob("*") if p.is_file()}


def test_rerunning_a_finished_run_changes_nothing(runs, tiny_checkpoint, capsys):
    from tooln1.training.loop import train

    summary = runs["ref"].summary
    workdir = pathlib.Path(summary["workdir"])
    before = _tree(workdir)
    again = train(make_config(workdir, tiny_checkpoint, runs["base"] / "jax_cache"))
    assert _tree(workdir) == before  # no metrics row, no event file, summary.json untouched
    assert again == json.loads((workdir / "summary.json").read_text())
    out = capsys.readouterr().out
    assert f"finished at step {GRPO_STEPS}; use a new workdir or --config.checkpoint.resume=false" in out


def test_a_finished_run_without_its_summary_finishes_at_its_last_step(runs, tiny_checkpoint, tmp_path):
    """Killed after the last checkpoint but before summary.json: the rerun trains no step, and says and
    validates at the run's last step (it reported 0 GRPO steps and logged the final validation at 0)."""
    import shutil

    from tooln1.training.loop import train

    summary = runs["ref"].summary
    workdir = tmp_path / "copy"
    shutil.copytree(summary["workdir"], workdir)
    (workdir / "summary.json").unlink()
    again = train(make_config(workdir, tiny_checkpoint, runs["base"] / "jax_cache"))
    assert again["grpo_steps"] == GRPO_STEPS and again["val_after_grpo"] == summary["val_after_grpo"]
    rows = read_jsonl(workdir / "metrics.jsonl")
    assert rows[-1]["step"] == GRPO_STEPS and rows[-1]["phase"] == "after GRPO", rows[-1]
    first = read_jsonl(pathlib.Path(summary["workdir"]) / "metrics.jsonl")
    assert [(r["phase"], r["step"]) for r in rows] == [(r["phase"], r["step"]) for r in first]  # redone once
    assert [r["phase"] for r in rows].count("after GRPO") == 1


def test_resume_refuses_another_seed(runs, tiny_checkpoint, tmp_path):
    import shutil

    from tooln1.config import ConfigError
    from tooln1.training.loop import train

    workdir = tmp_path / "run"
    shutil.copytree(runs["base"] / "full", workdir)
    cfg = make_config(workdir, tiny_checkpoint, runs["base"] / "jax_cache",
                      **{"seed": 5, "grpo.steps": GRPO_STEPS + 1})
    with pytest.raises(ConfigError, match=r"config.seed=5, but the checkpoints in .*grpo were written with seed 0"):
        train(cfg)


def test_corrupt_latest_checkpoint_resumes_from_the_previous_one(runs, tiny_checkpoint, tmp_path, capsys):
    """A truncated array file in the newest GRPO checkpoint: one warning naming the step and the file,
    then the run resumes from the previous kept step and ends with the reference's parameters."""
    import shutil

    from tooln1.training.loop import run_training

    ref = runs["ref"]
    workdir = tmp_path / "run"
    shutil.copytree(runs["base"] / "full", workdir)
    (workdir / "summary.json").unlink()  # as if killed after the last checkpoint
    latest = workdir / "checkpoints" / "grpo" / str(GRPO_STEPS)
    blobs = [p for p in (latest / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    big = max(blobs, key=lambda p: p.stat().st_size)
    big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    capsys.readouterr()
    run = run_training(make_config(workdir, tiny_checkpoint, runs["base"] / "jax_cache"))
    summary = run.summary
    out = capsys.readouterr().out
    warning = [line for line in out.splitlines() if "unreadable" in line]
    assert len(warning) == 1 and f"checkpoint step {GRPO_STEPS} is unreadable" in warning[0]
    assert f"{latest}/state" in warning[0] and f"resuming from step {GRPO_STEPS - 1}" in warning[0]
    assert summary["grpo_steps"] == GRPO_STEPS and summary["val_after_grpo"] == ref.summary["val_after_grpo"]
    a, b = params_of(ref.model), params_of(run.model)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The redone step's metrics replaced its first rows: each GRPO step is logged once.
    grpo_steps = [r["step"] for r in read_jsonl(workdir / "metrics.jsonl") if r["phase"] == "grpo"]
    assert grpo_steps == list(range(1, GRPO_STEPS + 1))


def test_truncated_fraction_counts_rows_cut_by_the_limit():
    from tooln1.data.tokens import truncated_fraction

    eos = 9
    tokens = np.array([[1, 2, 3], [1, 2, eos], [1, eos, 0], [1, 2, 3]])
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1]])
    assert truncated_fraction(tokens, mask, [eos]) == 0.5  # rows 0 and 3; row 1 ended on its last slot


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
    from tooln1.training.sft_phase import SFTExamples, sft_response

    recs = load_records("synthetic-simple:3:1")
    sft = ConfigDict({"target": "reason", "think_text": "call {names}", "max_seq_len": 700})
    ids, attn, lmask = SFTExamples(sft, tiny_tokenizer, 0, "<|im_end|>").arrays(recs)
    for i, r in enumerate(recs):
        reply = sft_response(r, "reason", "call {names}")
        assert tiny_tokenizer.decode(ids[i][lmask[i] > 0]) == reply
        assert compute_reward(reply.removesuffix("<|im_end|>"), r["answer"]) == 1.0
        assert attn[i][: int((attn[i] == 0).sum())].sum() == 0  # left padded
    assert sft_response(recs[0], "no_reason", "x").startswith("<tool_call>[")


def test_sft_drops_and_counts_examples_longer_than_max_seq_len(tiny_tokenizer, capsys):
    """Too-long SFT examples are dropped (counted, said once), not cut from the left: a kept example
    still starts with its system prompt, and a too-long one is refused rather than truncated."""
    from ml_collections import ConfigDict

    from tooln1.data import load_records
    from tooln1.training.sft_phase import SFTExamples

    recs = load_records("synthetic-simple:8:2")
    sft = ConfigDict({"target": "reason", "think_text": "call {names}", "max_seq_len": 0, "batch_size": 1})
    examples = SFTExamples(sft, tiny_tokenizer, 0, "<|im_end|>")
    lengths = [len(p) + len(r) for p, r in examples.pairs(recs)]
    limit = max(lengths) - 1
    sft.max_seq_len = limit
    capsys.readouterr()
    keep = examples.fitting(recs)
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    assert keep.tolist() == [i for i, n in enumerate(lengths) if n <= limit] and 0 < len(too_long) < len(recs)
    said = capsys.readouterr().out.splitlines()
    assert said == [f"[tooln1-train] SFT: dropped {len(too_long)} of {len(recs)} examples longer than "
                    f"config.sft.max_seq_len={limit}"]
    ids, attn, _ = examples.arrays([recs[i] for i in keep])
    assert all(tiny_tokenizer.decode(row[a > 0]).startswith("<|im_start|>system") for row, a in zip(ids, attn))
    with pytest.raises(ValueError, match=f"more than the padded length {limit}"):
        examples.arrays([recs[too_long[0]]])


def test_cli_keeps_freed_host_memory_before_anything_else(monkeypatch, capsys):
    """tooln1-train sets the allocator (tooln1.platform.host_memory) first thing: before it even reads the config,
    so before JAX or a tokenizer has started a thread."""
    import tooln1.cli as train_module

    calls = []
    monkeypatch.setattr(train_module, "keep_freed_memory", lambda: calls.append("kept"))
    with pytest.raises(SystemExit):
        train_module.main(["tooln1-train", "--config", "/nonexistent/config.py"])
    assert calls == ["kept"]
    assert "config file /nonexistent/config.py does not exist" in capsys.readouterr().err


def test_a_relative_compile_cache_follows_the_final_workdir(tmp_path, tiny_checkpoint):
    """``compile_cache_dir="jax_cache"`` lands in the workdir the run ends up with (--config.workdir
    applied), not in the directory the command was started from."""
    import jax

    from tooln1.training.loop import prepare_workdir

    before = jax.config.jax_compilation_cache_dir
    try:
        workdir = prepare_workdir(make_config(tmp_path / "moved", tiny_checkpoint, "jax_cache"))
        assert workdir == str(tmp_path / "moved")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "moved" / "jax_cache")
        # a cache shared by sibling workdirs is one path for all of them: the path is in every cache key
        prepare_workdir(make_config(tmp_path / "runs" / "seed1", tiny_checkpoint, "../jax_cache"))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "runs" / "jax_cache")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


@pytest.mark.parametrize("count, expected", [(0, []), (3, [(0, 0), (0, 1), (1, 0)]),
                                             (99, [(0, 0), (0, 1), (1, 0), (1, 1)])])
def test_rollout_log_takes_the_first_samples_in_group_order(count, expected):
    """``log.rollouts`` samples from the front of the batch (row b*G+g = sample g of record b), each with its
    record's id and its own reward; 0 writes nothing, and more than the batch writes the batch."""
    import types

    from tooln1.training.grpo_phase import GRPOPhase

    written = []
    owner = types.SimpleNamespace(group_size=2, ctx=types.SimpleNamespace(cfg=types.SimpleNamespace(
        log=types.SimpleNamespace(rollouts=count))), phase=types.SimpleNamespace(
        append_log=lambda name, rows: written.append((name, rows))))
    rollout = types.SimpleNamespace(responses=["a0", "a1", "b0", "b1"], rewards=np.array([1.0, 0.0, 0.0, 1.0]))
    GRPOPhase._log_rollouts(owner, [{"id": "a"}, {"id": "b"}], rollout)
    (name, rows), = written
    assert name == "rollouts.jsonl"
    assert [(r["id"], r["sample"], r["reward"], r["response"]) for r in rows] == [
        ("ab"[b], g, [1.0, 0.0, 0.0, 1.0][2 * b + g], "ab"[b] + str(g)) for b, g in expected]
