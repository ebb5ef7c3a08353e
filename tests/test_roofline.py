"""The roofline of tooln1-fit: FLOPs and HBM bytes of a program against hand counts, the bound it
implies, and a GRPO step's predicted seconds as the sum of its programs."""
import dataclasses

import pytest

from tooln1.models import ModelConfig
from tooln1.models.flops import decode_flops, prefill_flops
from tooln1.preflight import fit, roofline
from tooln1.preflight.targets import get_target

# vocab 10, d 8, intermediate 16, 2 layers, 2 heads, 1 KV head, head_dim 4, tied, q/k/v biases
TINY = ModelConfig(10, 8, 16, 2, 2, 1, 4)
# per layer: q,k,v,o 8·4·(2·2 + 2·1) = 192, biases (2 + 2)·4 = 16, MLP 3·8·16 = 384, norms 16
# -> 608; 2 layers + final norm 8 = 1224; the tied head 10·8 = 80 is a matmul
MATMUL_PARAMS = 1224 + 80
KV_PER_TOKEN = 2 * 2 * 1 * 4 * 2  # K and V, 2 layers, 1 KV head, head_dim 4, bf16


def test_decode_flops_are_the_analytic_count_by_hand():
    # a token: 2·1304 matmul FLOPs + attention 4·2 layers·2 heads·4 dims·context
    per_token = 2 * MATMUL_PARAMS + 4 * 2 * 2 * 4 * (3 + 4 / 2)
    cost, steps = roofline.decode(TINY, samples=6, prompt=3, response=4, slots=6, page_size=4,
                                  layout=roofline.Layout(), itemsize=2)
    assert cost.flops == pytest.approx(6 * 4 * per_token)
    assert cost.flops == pytest.approx(decode_flops(TINY, 6, 1, 3, 4))
    assert steps == 4
    prefilled = roofline.prefill(TINY, 2, 3, chunk=8, layout=roofline.Layout(), itemsize=2)
    assert prefilled.flops == pytest.approx(prefill_flops(TINY, 2, 3))


def test_decode_round_bytes_are_weights_and_pages_by_hand():
    # 3 slots at context 5 read 2 pages of 4 tokens each; every matmul weight once in bf16
    step = roofline.decode_step(TINY, slots=3, context=5, page_size=4, layout=roofline.Layout(), itemsize=2)
    assert step.bytes == 2 * MATMUL_PARAMS + 3 * 8 * KV_PER_TOKEN
    # 7 samples on 3 slots: 3 waves of 4 steps at mean context 3 + 4/2 = 5, 7/3 slots busy each step
    cost, steps = roofline.decode(TINY, samples=7, prompt=3, response=4, slots=3, page_size=4,
                                  layout=roofline.Layout(), itemsize=2)
    assert steps == 12
    assert cost.bytes == pytest.approx(12 * (2 * MATMUL_PARAMS + 7 / 3 * 8 * KV_PER_TOKEN))
    # weights split over tensor 2, pages over all 4 devices
    split = roofline.decode_step(TINY, 3, 5, 4, roofline.Layout(devices=4, tensor=2), 2)
    assert split.bytes == 2 * MATMUL_PARAMS / 2 + 3 * 8 * KV_PER_TOKEN / 4


def test_decode_step_bound_flips_from_memory_to_compute_as_the_batch_grows():
    h100 = get_target("h100-80gb:1")
    big = ModelConfig(32000, 4096, 11008, 32, 32, 8, 128, dtype="bfloat16")
    bounds = {slots: roofline.bound(roofline.decode_step(big, slots, 64, 16, roofline.Layout(), 2),
                                    h100.peak_flops, h100.hbm_bandwidth)["bound"] for slots in (1, 64, 4096)}
    assert bounds == {1: "memory", 64: "memory", 4096: "compute"}
    one = roofline.bound(roofline.decode_step(big, 1, 64, 16, roofline.Layout(), 2), 989e12, 3.35e12)
    assert one["seconds"] == one["memory_seconds"] == pytest.approx(one["hbm_bytes"] / 3.35e12)


def test_target_peaks_are_the_spec_sheet_figures():
    peaks = {name: (get_target(name).peak_flops, get_target(name).hbm_bandwidth) for name in
             ("h100-80gb:8", "h200:1", "a100-80gb:8", "tpu-v4-32", "tpu-v5e-64", "tpu-v5p-128")}
    assert peaks == {"h100-80gb:8": (989e12, 3.35e12), "h200:1": (989e12, 4.8e12), "a100-80gb:8": (312e12, 2.039e12),
                     "tpu-v4-32": (275e12, 1.2e12), "tpu-v5e-64": (197e12, 0.82e12),
                     "tpu-v5p-128": (459e12, 2.76e12)}


def test_step_estimate_sums_the_step_programs_and_leaves_validation_out():
    from tests.test_fit import tiny_cfg
    from tooln1.config import runtime
    from tooln1.rollout.sampling import bucket_length

    cfg = tiny_cfg(prompt=16, response=8)
    target = dataclasses.replace(get_target("cpu:8"), peak_flops=1e12, hbm_bandwidth=1e11)
    report = fit.fit(cfg, target, roofline_only=True, say=lambda _: None)["roofline"]
    programs = report["programs"]
    assert set(programs) >= {"rollout round", "rollout prefill", "update", "validation rollout"}
    in_step = [programs[k] for k in fit.IN_STEP if k in programs]
    assert report["step_seconds"] == pytest.approx(sum(b["seconds"] for b in in_step))
    assert report["step_seconds"] < sum(b["seconds"] for b in programs.values())
    for b in programs.values():
        assert b["seconds"] == max(b["compute_seconds"], b["memory_seconds"])
        assert b["compute_seconds"] == pytest.approx(b["flops"] / (8 * 1e12))
    config = fit.model_config(cfg)
    prompt = bucket_length(cfg.data.max_prompt_tokens, runtime.prompt_buckets(cfg))
    assert programs["rollout round"]["flops"] == pytest.approx(decode_flops(config, 8, 2, prompt, 8))


def test_update_bytes_count_weights_grads_and_adam_moments():
    layout = roofline.Layout(devices=2, fsdp=2)
    cost = roofline.update(TINY, rows=4, seq=6, mini_batches=1, micro_batches=2, layout=layout, itemsize=2)
    weights = 2 * MATMUL_PARAMS * (2 * 2 + 8)  # 2 micro-batches: bf16 forward + backward, fp32 grads r+w
    adam = 28 * (1224 + 80) / 2  # all params (the tied embedding is the head), over fsdp 2
    acts = 3 * roofline.activation_bytes(TINY, 24, 2) / 2
    assert cost.bytes == pytest.approx(weights + adam + acts)
    assert roofline.activation_bytes(TINY, 1, 2) == 2 * (2 * (4 * 8 + 2 * 4 + 3 * 16) * 2 + 4 * 10)


def test_compiled_report_carries_each_programs_roofline_and_the_step_estimate():
    from tests.test_fit import tiny_cfg

    target = dataclasses.replace(get_target("cpu:8"), peak_flops=1e12, hbm_bandwidth=1e11)
    report = fit.fit(tiny_cfg(), target, programs="logprobs", say=lambda _: None)
    (entry,) = report["programs"]
    assert entry["roofline"] == report["roofline"]["programs"]["logprobs"]
    assert entry["roofline"]["flops"] == pytest.approx(entry["flops"])  # one pass: the reference's
    assert report["roofline"]["step_seconds"] == entry["roofline"]["seconds"]


def test_a_measured_rollouts_work_is_its_counts_by_hand():
    # 2 prompts of 3 tokens prefilled in one chunk (positions 0, 1 attend to 1 + 2 keys each), then 4 decode
    # steps of 2 live slots at contexts 3..6 (18 keys a slot)
    stats = dict(prefill_tokens=4, prefill_chunks=1, prefill_context_tokens=6, decode_steps=4, slot_steps=8,
                 decode_context_tokens=36)
    work = roofline.rollout_work(TINY, stats, roofline.Layout(), itemsize=2)
    attention = 4 * 2 * 2 * 4  # FLOPs per query per key: QK and AV, 2 layers, 2 heads, head_dim 4
    assert work["prefill"].flops == 2 * (MATMUL_PARAMS - 80) * 4 + attention * 6
    assert work["prefill"].bytes == 2 * MATMUL_PARAMS + 2 * 4 * KV_PER_TOKEN
    assert work["decode"].flops == 2 * MATMUL_PARAMS * 8 + attention * 36
    assert work["decode"].bytes == 4 * 2 * MATMUL_PARAMS + 36 * KV_PER_TOKEN
    # over 4 devices, weights split 2 ways: weights / 2 and KV / 4 per device
    split = roofline.rollout_work(TINY, stats, roofline.Layout(devices=4, tensor=2), itemsize=2)
    assert split["decode"].bytes == 4 * MATMUL_PARAMS + 36 * KV_PER_TOKEN / 4
    # measured against the bound: 1 s of decode on a device of 1e6 FLOP/s and 1e4 B/s
    r = roofline.against_measured({"decode": 1.0}, work, 1e6, 1e4)["decode"]
    assert r["bound"] == "memory" and r["seconds"] == work["decode"].bytes / 1e4
    assert r["ratio"] == pytest.approx(1.0 / r["seconds"])


def test_devices_of_a_known_kind_get_their_targets_peaks():
    from tooln1.preflight.targets import target_of_devices

    class Device:
        def __init__(self, kind):
            self.device_kind = kind

    h200 = target_of_devices([Device("NVIDIA H200")] * 2)
    assert (h200.num_devices, h200.peak_flops, h200.hbm_bandwidth) == (2, 989e12, 4.8e12)
    assert target_of_devices([Device("TPU v5 lite")]).hbm_bandwidth == 0.82e12
    assert target_of_devices([Device("cpu")]) is None


def test_grpo_bench_measures_its_steady_iterations_against_the_update_roofline():
    """tools/bench/grpo.py: the update's bound is `roofline.update` over the trained rows (G responses packed
    behind one prompt), its measured seconds the steady iterations' median."""
    import argparse
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "bench"))
    import grpo

    args = argparse.Namespace(roofline_target="h200:1", dtype="bfloat16", prompt_len=3, prompts=2, group=4)
    sample_stats = dict(prefill_tokens=4, prefill_chunks=1, prefill_context_tokens=6, decode_steps=4, slot_steps=8,
                        decode_context_tokens=36)
    rows = [dict(sample=9.0, logprobs=9.0, step=9.0, packed_len=10, trained_len=4)] + [
        dict(sample=1.0, logprobs=0.5, step=s, packed_len=10, trained_len=4) for s in (2.0, 4.0, 3.0)]
    got = grpo._roofline(args, TINY, sample_stats, rows, rows_per_prompt=4)
    h200 = get_target("h200:1")
    want = roofline.bound(roofline.update(TINY, 2, 3 + 10, 1, 1, roofline.Layout(), 2), h200.peak_flops,
                          h200.hbm_bandwidth)
    step = got["parts"]["step"]
    assert step["seconds"] == want["seconds"] and step["measured_seconds"] == 3.0
    assert step["ratio"] == 3.0 / want["seconds"]
    assert got["parts"]["sample"]["hbm_bytes"] == sum(
        c.bytes for c in roofline.rollout_work(TINY, sample_stats, roofline.Layout(), 2).values())


def test_lora_update_moves_the_adapters_gradients_and_moments_only():
    import jax
    from flax import nnx

    from tooln1.models import CausalLM
    from tooln1.models.flops import trained_params
    from tooln1.models.lora import LoRAParam

    lora = dataclasses.replace(TINY, lora_rank=2, lora_targets=("q", "v", "down"))
    model = nnx.eval_shape(lambda: CausalLM(lora, rngs=nnx.Rngs(0)))
    held = sum(x.size for x in jax.tree.leaves(nnx.state(model, LoRAParam)))
    # per layer, rank 2: q 8 -> 2·4, v 8 -> 1·4, down 16 -> 8
    assert trained_params(lora) == held == 2 * 2 * ((8 + 8) + (8 + 4) + (16 + 8))
    cost = roofline.update(lora, rows=4, seq=6, mini_batches=1, micro_batches=2, layout=roofline.Layout(), itemsize=2)
    weights = 2 * (MATMUL_PARAMS * 2 * 2 + held * 8)  # every weight read forward and backward; adapters' grads
    acts = 2 * roofline.activation_bytes(TINY, 24, 2)  # 2 passes: frozen kernels need no weight gradient
    assert cost.bytes == pytest.approx(weights + 28 * held + acts)
    # the lowest of 2 blocks frozen: the backward reads half the weights; every param keeps its moments
    frozen = dataclasses.replace(TINY, frozen_layers=1)
    cost = roofline.update(frozen, 4, 6, 1, 1, roofline.Layout(), 2)
    assert cost.bytes == pytest.approx(MATMUL_PARAMS * 2 * 1.5 + 1304 * 8 + 28 * 1304
                                       + 2 * roofline.activation_bytes(TINY, 24, 2))


def test_a_quantized_base_is_read_at_its_stored_width_by_the_trained_passes_only():
    qlora = dataclasses.replace(TINY, lora_rank=2, base_quantization="int4")
    kernels = 2 * (8 * 4 * (2 * 2 + 2 * 1) + 3 * 8 * 16)  # q, k, v, o and the MLP of 2 blocks
    held = 2 * MATMUL_PARAMS - kernels * 2 + kernels * 0.625
    assert roofline.trained_model_weight_bytes(qlora, 2) == held
    one = roofline.logprobs(qlora, 1, 1, 1, roofline.Layout(), 2)
    assert one.bytes == pytest.approx(held + roofline.activation_bytes(TINY, 1, 2))
    # the engine decodes a merged copy in the compute dtype: a decode step still reads every weight at 2 bytes
    assert roofline.decode_step(qlora, 1, 4, 4, roofline.Layout(), 2).bytes == 2 * MATMUL_PARAMS + 4 * KV_PER_TOKEN
