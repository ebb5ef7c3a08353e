"""Sampling on a mesh gives the single-device result (tests/conftest.py provides 8 host CPU devices)."""
import dataclasses

import jax
import numpy as np
import pytest

from tooln1.checkpoints.hf_import import load_model
from tooln1.checkpoints.tiny import make_tiny_checkpoint, special_token_ids
from tooln1.rollout.engine import Engine, EngineConfig
from tooln1.rollout.sampling import SamplingConfig, sample
from tooln1.sharding import make_mesh

MESHES = {"fsdp2_tensor4": {"fsdp": 2, "tensor": 4}, "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2}}


def test_sharded_equals_single_device(tmp_path, monkeypatch):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets 8 host CPU devices)")
    ids = special_token_ids()
    path = make_tiny_checkpoint(str(tmp_path / "tiny"), nonzero_biases=True, init_std=0.3, seed=2)
    pad = ids["<|endoftext|>"]
    rng = np.random.RandomState(0)
    prompt_ids = np.full((4, 17), pad, np.int32)
    prompt_mask = np.zeros((4, 17), np.int32)
    for i, n in enumerate([5, 17, 9, 1]):  # ragged, left-padded
        prompt_ids[i, 17 - n:] = rng.randint(0, 2990, n)
        prompt_mask[i, 17 - n:] = 1
    cfg = SamplingConfig(num_samples=2, max_new_tokens=12, temperature=0.7, top_k=20, top_p=0.9,
                         eos_ids=(ids["<|im_end|>"], pad), pad_id=pad)

    single = sample(load_model(path, dtype="float32"), prompt_ids, prompt_mask, cfg, 3).local()
    assert single.tokens.shape == (8, 12)
    for name, shape in MESHES.items():
        model = load_model(path, dtype="float32", mesh=make_mesh(shape))
        assert len(model.layers.attention.q_kernel[...].sharding.device_set) == 8, name
        out = sample(model, prompt_ids, prompt_mask, cfg, 3).local()
        np.testing.assert_array_equal(out.tokens, single.tokens, err_msg=name)
        np.testing.assert_array_equal(out.mask, single.mask, err_msg=name)
        np.testing.assert_allclose(out.logprobs, single.logprobs, atol=1e-4, rtol=0, err_msg=name)
    # the decoding copy split per layer (the CPU layout of large models) samples the same, and its
    # MLP kernels stay tensor-parallel
    per_layer = dataclasses.replace(cfg, engine=EngineConfig(layer_layout="per_layer"))
    out = sample(model, prompt_ids, prompt_mask, per_layer, 3).local()
    np.testing.assert_array_equal(out.tokens, single.tokens)
    np.testing.assert_allclose(out.logprobs, single.logprobs, atol=1e-4, rtol=0)
    gate = Engine(model, per_layer.engine).weights["layers"][0]["mlp"]["gate_kernel"][...]
    assert gate.shape == model.layers.mlp.gate_kernel[...].shape[1:]
    assert gate.sharding.spec[1] == "tensor", gate.sharding.spec
    # the TPU's ragged pool (its pure-JAX attention here), each device writing its own kv heads' keys and
    # values side by side, samples the same
    import tooln1.platform.decode_layout

    monkeypatch.setattr(tooln1.platform.decode_layout, "kv_pool", lambda config, target, cores: "ragged")
    assert Engine(model, cfg.engine).layout.kv_pool == "ragged"
    out = sample(model, prompt_ids, prompt_mask, cfg, 3).local()
    np.testing.assert_array_equal(out.tokens, single.tokens)
    np.testing.assert_allclose(out.logprobs, single.logprobs, atol=1e-4, rtol=0)


def test_each_batch_shard_decodes_its_own_slots_from_its_own_pages(tmp_path):
    """On data 2 x fsdp 2 x tensor 2 the engine has 4 batch shards: each device holds its shard's pages
    (kv heads split over tensor), nothing pool-sized crosses devices, and top-k sampling runs on each
    shard's own rows (XLA gathered every shard's logits for top_k)."""
    import re

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets 8 host CPU devices)")
    path = make_tiny_checkpoint(str(tmp_path / "tiny"), nonzero_biases=True, init_std=0.3, seed=2)
    model = load_model(path, dtype="float32", mesh=make_mesh(MESHES["data2_fsdp2_tensor2"]))
    cfg = SamplingConfig(num_samples=3, max_new_tokens=12, temperature=0.9, top_k=50, eos_ids=(0,))
    engine = Engine(model, EngineConfig(page_size=8, prefill_chunk=16))
    shape = engine.shape(cfg, 10 * 3, 40)
    assert (shape.shards, shape.slots) == (4, 8)  # 30 samples over 4 shards: 8 slots each
    pools, _ = engine._init_state(shape, (2,))
    # [X, KV, L, N, rows, width]: a page of 8 tokens x 16 is one row of 128 lanes (`page_shape`)
    assert pools[0].shape == (4, 2, 2, shape.num_pages, 1, 128)
    assert pools[0].sharding.shard_shape(pools[0].shape) == (1, 1, 2, shape.num_pages, 1, 128)

    def collective_shapes(engine, program):
        text = engine.lower(cfg, 10 * 3, 40, program=program).compile().as_text()
        kinds = "all-gather|all-reduce|all-to-all|collective-permute"
        collectives = re.findall(rf"= \w+\[([\d,]*)\][^ ]* (?:{kinds})", text)
        return [tuple(int(d) for d in dims.split(",") if d) for dims in collectives]

    for program in ("round", "prefill"):
        shapes = collective_shapes(engine, program)
        assert shapes and not [s for s in shapes if shape.num_pages in s or (32, 3000) == s[:2]], (program, shapes)
    # 2 kv heads on a tensor axis of 4: the pools are replicated over it and stay so through the layers
    # (XLA split them after the query heads and all-gathered both whole pools at every round's end)
    model = load_model(path, dtype="float32", mesh=make_mesh(MESHES["fsdp2_tensor4"]))
    engine = Engine(model, EngineConfig(page_size=8, prefill_chunk=16))
    pages = engine.shape(cfg, 10 * 3, 40).num_pages
    for program in ("round", "prefill"):
        shapes = collective_shapes(engine, program)
        assert shapes and not [s for s in shapes if pages in s], (program, shapes)
