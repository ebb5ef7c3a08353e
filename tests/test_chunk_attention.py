"""The fused prefill-chunk kernel (`tooln1.models.chunk_attention`, run by Pallas' interpreter: no GPU here)
against the portable blockwise path on what the engine's prefill builds: prompts packed in a chunk, some
continuing context pages (whose tails are unused slots), padding at the end; and the platform seam that
picks it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from tooln1.models.attention import attention
from tooln1.models.chunk_attention import chunk_attention, splash_chunk_attention, visible_blocks
from tooln1.models.config import preset
from tooln1.platform.decode_layout import DecodeLayout, prefill_attention

BLOCKS = dict(block_q=16, block_k=16)  # several query and key blocks at the tests' sizes


def _prefill_inputs(x_shards=2, chunk=80, ctx=64, heads=4, kv_heads=2, dim=32, dtype=jnp.float32, seed=0):
    """A prefill chunk as `tooln1.rollout.programs` attends it: keys [context; chunk], context positions -1.
    Shard 0 packs three prompts (the first and third continue context pages, the second starts fresh)
    and ends in padding; shard 1 holds one prompt over a short context."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(x_shards, chunk, heads, dim)), dtype)
    k, v = (jnp.asarray(rng.normal(size=(x_shards, ctx + chunk, kv_heads, dim)), dtype) for _ in range(2))
    seg = np.zeros((x_shards, chunk), np.int32)
    ctx_seg = np.zeros((x_shards, ctx), np.int32)
    seg[0, :30], seg[0, 30:45], seg[0, 45:70] = 1, 2, 3
    ctx_seg[0, :21], ctx_seg[0, 24:50] = 1, 3  # pages of 8: 3 unused slots end the first prompt's context
    seg[1], ctx_seg[1, :5] = 1, 1
    q_pos = np.broadcast_to(np.arange(chunk, dtype=np.int32), (x_shards, chunk))
    kv_pos = np.concatenate([np.full((x_shards, ctx), -1, np.int32), q_pos], axis=1)
    return q, k, v, seg, np.concatenate([ctx_seg, seg], axis=1), q_pos, kv_pos


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 2e-2)])
def test_kernel_equals_the_portable_path(dtype, tol):
    q, k, v, q_seg, kv_seg, q_pos, kv_pos = _prefill_inputs(dtype=dtype)
    portable = attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, implementation="blockwise", block_size=16)
    fused = chunk_attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, interpret=True, **BLOCKS)
    assert fused.shape == q.shape and fused.dtype == q.dtype
    np.testing.assert_allclose(np.asarray(fused, np.float32), np.asarray(portable, np.float32), atol=tol, rtol=tol)
    assert not np.asarray(fused[0, 70:]).any()  # padding queries see nothing: zeros, as the portable path


@pytest.mark.parametrize("tensor", [1, 2])
def test_kernels_run_per_batch_shard_and_kv_heads_on_a_mesh(tensor):
    q, k, v, *masks = _prefill_inputs()
    mesh = Mesh(np.array(jax.devices()[:2 * tensor]).reshape(2, 1, tensor), ("data", "fsdp", "tensor"))
    alone = chunk_attention(q, k, v, *masks, interpret=True, **BLOCKS)
    sharded = jax.jit(lambda *a: chunk_attention(*a, mesh=mesh, interpret=True, **BLOCKS))(q, k, v, *masks)
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(alone), atol=1e-6, rtol=0)
    splash = jax.jit(lambda *a: splash_chunk_attention(*a[:5], mesh=mesh, interpret=True))(q, k, v, *masks)
    np.testing.assert_allclose(np.asarray(splash), np.asarray(alone), atol=2e-5, rtol=2e-5)


def test_visible_blocks_are_those_holding_a_visible_key():
    """For contiguous prompts the listed key blocks are exactly those with a key some query of the block
    sees (checked against the dense visibility), in order: other prompts' context and the causally hidden
    chunk blocks are skipped."""
    _, _, _, q_seg, kv_seg, q_pos, kv_pos = _prefill_inputs()
    plan = np.asarray(visible_blocks(*map(jnp.asarray, (q_seg, kv_seg, q_pos, kv_pos)), 16, 16))
    see = ((q_seg[:, :, None] == kv_seg[:, None, :]) & (q_seg[:, :, None] != 0)
           & (kv_pos[:, None, :] <= q_pos[:, :, None]))
    b, t, s = see.shape
    exact = see.reshape(b, t // 16, 16, s // 16, 16).any(axis=(2, 4))
    for x in range(b):
        for i in range(t // 16):
            count = plan[x, i, 0]
            np.testing.assert_array_equal(plan[x, i, 1:1 + count], np.flatnonzero(exact[x, i]))
    assert plan[0, :, 0].sum() < exact.shape[1] * exact.shape[2]  # blocks were skipped


def test_the_seam_picks_the_kernel_on_gpus_for_16_bit_power_of_two_heads_and_splash_on_tpus():
    bf16 = preset("qwen2.5-0.5b", dtype="bfloat16")  # heads of 64
    assert prefill_attention(bf16, "gpu") == prefill_attention(bf16, "cuda") == "pallas_gpu"
    assert prefill_attention(bf16, "tpu") == prefill_attention(bf16.replace(dtype="float32"), "tpu") == "splash"
    assert prefill_attention(bf16, "cpu") == "blockwise"
    assert prefill_attention(bf16.replace(dtype="float32"), "gpu") == "blockwise"  # TF32 dots
    assert prefill_attention(bf16.replace(head_dim=80), "gpu") == "blockwise"  # Triton tiles
    assert DecodeLayout.of(bf16, None).prefill_attention == "blockwise"  # this CPU


def test_splash_path_equals_the_portable_path():
    """The TPU path (splash attention, in Pallas' interpreter): context and chunk lengths off its 128-token
    tiles are padded in segment 0."""
    q, k, v, q_seg, kv_seg, q_pos, kv_pos = _prefill_inputs()
    portable = attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, implementation="blockwise", block_size=16)
    fused = splash_chunk_attention(q, k, v, q_seg, kv_seg, interpret=True)
    assert fused.shape == q.shape
    np.testing.assert_allclose(np.asarray(fused), np.asarray(portable), atol=2e-5, rtol=2e-5)
    assert not np.asarray(fused[0, 70:]).any()
