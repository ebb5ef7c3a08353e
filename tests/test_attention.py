"""The attention backends against the dense reference: forward, gradients and log-sum-exp, on the
layouts tooln1 builds (left-padded causal rows, shared-prompt parts, cached decoding)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tooln1.models.attention import attention, merge_partial


def _qkv(b, t, s, heads=4, kv_heads=2, dim=8, seed=0, dtype=jnp.float32):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(keys[0], (b, t, heads, dim), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (b, s, kv_heads, dim), jnp.float32).astype(dtype)
    v = jax.random.normal(keys[2], (b, s, kv_heads, dim), jnp.float32).astype(dtype)
    return q, k, v


def _left_padded(b, t, pads):
    seg = np.ones((b, t), np.int32)
    for row, n in enumerate(pads):
        seg[row, :n] = 0
    return jnp.asarray(seg)


def _loss(impl, q, k, v, *args, cot, **kw):
    out = attention(q, k, v, *args, implementation=impl, **kw)
    if isinstance(out, tuple):  # weight the log-sum-exp too, so its gradient is checked
        return jnp.sum(out[0] * cot) + jnp.sum(jnp.where(out[1] > -1e29, out[1], 0.0))
    return jnp.sum(out * cot)


def _check(q, k, v, *args, real, tol=1e-5, block_size=8, **kw):
    """Blockwise equals dense in value and gradient at the query rows marked ``real``."""
    dense = attention(q, k, v, *args, implementation="dense", **kw)
    block = attention(q, k, v, *args, implementation="blockwise", block_size=block_size, **kw)
    dense_out, block_out = (dense[0], block[0]) if isinstance(dense, tuple) else (dense, block)
    r = np.asarray(real)
    np.testing.assert_allclose(np.asarray(block_out, np.float32)[r], np.asarray(dense_out, np.float32)[r],
                               atol=tol, rtol=tol)
    cot = jnp.where(jnp.asarray(r)[..., None, None], jax.random.normal(jax.random.PRNGKey(9), q.shape), 0.0)
    grads = [jax.grad(_loss, argnums=(1, 2, 3))(impl, q, k, v, *args, cot=cot, block_size=block_size, **kw)
             for impl in ("dense", "blockwise")]
    for g_dense, g_block in zip(*grads):
        np.testing.assert_allclose(np.asarray(g_block, np.float32), np.asarray(g_dense, np.float32),
                                   atol=tol * 10, rtol=tol * 10)
    return dense_out


def test_causal_left_padded_rows():
    """Several query and key blocks (block 8, T 37 not a multiple), rows with 0, 5 and 20 pads."""
    q, k, v = _qkv(3, 37, 37)
    seg = _left_padded(3, 37, [0, 5, 20])
    out = _check(q, k, v, seg, seg, real=seg != 0)
    # the mask matters: attending to the padding too moves the outputs of the padded rows
    ones = jnp.ones_like(seg)
    unmasked = attention(q, k, v, ones, ones, implementation="dense")
    assert np.abs(np.asarray(unmasked - out))[np.asarray(seg != 0)].max() > 1e-2


def test_dense_matches_a_numpy_softmax():
    q, k, v = _qkv(1, 5, 5, heads=2, kv_heads=1)
    seg = _left_padded(1, 5, [2])
    out = np.asarray(attention(q, k, v, seg, seg, implementation="dense"))
    qn, kn, vn = (np.asarray(x, np.float64) for x in (q, k, v))
    for t in range(2, 5):
        for h in range(2):
            s = qn[0, t, h] @ kn[0, 2:t + 1, 0].T / np.sqrt(8)
            p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            np.testing.assert_allclose(out[0, t, h], p @ vn[0, 2:t + 1, 0], atol=1e-5)


def test_shared_prompt_parts_merge_to_the_packed_attention():
    """Responses attending [prompt keys] and [own causal keys] separately, merged by log-sum-exp,
    equal one attention over prompt ++ response (what the unpacked layout computes)."""
    b, p, r, g = 2, 13, 11, 3
    q, k, v = _qkv(b * g, p + r, p + r, seed=1)
    _, kp, vp = _qkv(b, p, p, seed=7)  # a group's responses share their prompt's keys and values
    k = jnp.concatenate([jnp.repeat(kp, g, axis=0), k[:, p:]], axis=1)
    v = jnp.concatenate([jnp.repeat(vp, g, axis=0), v[:, p:]], axis=1)
    prompt_seg = _left_padded(b, p, [0, 6])
    seg = jnp.concatenate([jnp.repeat(prompt_seg, g, axis=0), jnp.ones((b * g, r), jnp.int32)], axis=1)
    full = attention(q, k, v, seg, seg, implementation="dense")[:, p:]
    q_resp = q[:, p:].reshape(b, g * r, *q.shape[2:])
    for impl in ("dense", "blockwise"):
        cross = attention(q_resp, kp, vp, jnp.ones((b, g * r), jnp.int32), prompt_seg, causal=False,
                          implementation=impl, block_size=8, return_lse=True)
        cross = tuple(x.reshape(b * g, r, *x.shape[2:]) for x in cross)
        own = attention(q[:, p:], k[:, p:], v[:, p:], jnp.ones((b * g, r), jnp.int32),
                        jnp.ones((b * g, r), jnp.int32), implementation=impl, block_size=8, return_lse=True)
        merged = merge_partial([cross, own])
        np.testing.assert_allclose(np.asarray(merged), np.asarray(full), atol=1e-5, rtol=1e-5)


def test_return_lse_gradient_matches_dense():
    q, k, v = _qkv(2, 19, 19, seed=2)
    seg = _left_padded(2, 19, [0, 9])
    _check(q, k, v, seg, seg, real=seg != 0, return_lse=True)


def test_cached_decode_layout():
    """Two new tokens at slots 9 and 10 of a 24-slot cache: causal by slot, empty slots invisible."""
    q, _, _ = _qkv(2, 2, 24, seed=3)
    _, k, v = _qkv(2, 2, 24, seed=4)
    kv_seg = jnp.asarray(np.r_[np.zeros(3), np.ones(8), np.zeros(13)][None].repeat(2, 0), jnp.int32)
    q_pos = jnp.asarray([[9, 10], [9, 10]], jnp.int32)
    kv_pos = jnp.broadcast_to(jnp.arange(24, dtype=jnp.int32), (2, 24))
    ones = jnp.ones((2, 2), jnp.int32)
    _check(q, k, v, ones, kv_seg, q_pos, kv_pos, real=ones != 0)


@pytest.mark.parametrize("query_block,key_block", [(4, 16), (8, 4), (2, 64)])
def test_query_and_key_blocks_of_their_own_sizes(query_block, key_block):
    """A chunk's queries over [context; chunk] keys (the engine's prefill layout) in query and key blocks of
    different sizes, including key blocks wider than ``block_size``."""
    q, _, _ = _qkv(1, 20, 20, seed=6)
    _, k, v = _qkv(1, 52, 52, seed=7)
    q_seg = jnp.asarray([[1] * 9 + [2] * 11], jnp.int32)
    kv_seg = jnp.concatenate([jnp.asarray([[1] * 14 + [2] * 10 + [0] * 8], jnp.int32), q_seg], axis=1)
    q_pos = jnp.arange(20, dtype=jnp.int32)[None]
    kv_pos = jnp.concatenate([jnp.full((1, 32), -1, jnp.int32), q_pos], axis=1)
    dense = attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, implementation="dense")
    block = attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, implementation="blockwise", block_size=8,
                      query_block=query_block, key_block=key_block)
    np.testing.assert_allclose(np.asarray(block), np.asarray(dense), atol=1e-5, rtol=1e-5)


def test_fully_masked_query_gives_zeros_not_nan():
    q, k, v = _qkv(1, 9, 9)
    seg = _left_padded(1, 9, [4])
    for impl in ("dense", "blockwise"):
        out, lse = attention(q, k, v, seg, seg, implementation=impl, block_size=4, return_lse=True)
        assert np.all(np.asarray(out)[0, :4] == 0) and np.all(np.isfinite(np.asarray(out)))
        assert np.all(np.asarray(lse)[0, :4] < -1e29)


def test_bfloat16_blockwise_close_to_dense():
    q, k, v = _qkv(2, 40, 40, seed=5, dtype=jnp.bfloat16)
    seg = _left_padded(2, 40, [0, 7])
    # bf16 inputs, fp32 softmax on both paths: they differ by bf16 rounding of the probabilities
    _check(q, k, v, seg, seg, real=seg != 0, tol=2e-2)


def test_cudnn_row_rolling_matches_dense():
    """The cuDNN path's row rolling, run through jax.nn.dot_product_attention's XLA implementation
    (same masks as cuDNN: causal + per-row lengths), equals the dense reference on real tokens."""
    from tooln1.models import attention as module

    q, k, v = _qkv(3, 16, 16, seed=6)
    seg = _left_padded(3, 16, [0, 3, 9])
    original = jax.nn.dot_product_attention

    def xla(*args, implementation=None, **kw):
        return original(*args, implementation="xla", **kw)

    module.jax.nn.dot_product_attention = xla
    try:
        out = module._cudnn(q, k, v, seg, causal=True)
    finally:
        module.jax.nn.dot_product_attention = original
    dense = attention(q, k, v, seg, seg, implementation="dense")
    real = np.asarray(seg != 0)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(dense)[real], atol=1e-5)


def test_cudnn_is_not_asked_for_float32():
    """cuDNN's fused attention rejects float32 inputs ("Q must be fp16/bf16"): a float32 model on a
    GPU takes the blockwise path instead (on this CPU, asking cuDNN for float32 would fail the same)."""
    q, k, v = _qkv(2, 16, 16, seed=7)
    seg = _left_padded(2, 16, [0, 5])
    out = attention(q, k, v, seg, seg, implementation="cudnn", block_size=8)
    dense = attention(q, k, v, seg, seg, implementation="dense")
    real = np.asarray(seg != 0)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(dense)[real], atol=1e-5)


def test_unknown_implementation_is_named():
    q, k, v = _qkv(1, 4, 4)
    seg = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="flash3"):
        attention(q, k, v, seg, seg, implementation="flash3")


def test_splash_kernel_in_interpret_mode_matches_dense():
    """The TPU path (Pallas splash attention, GQA through its MQA kernel, segment ids for the left
    padding) run by Pallas' interpreter on the CPU."""
    from tooln1.models import attention as module

    q, k, v = _qkv(1, 256, 256, dim=128, seed=8)
    seg = _left_padded(1, 256, [37])
    out = module._splash(q, k, v, seg, seg, causal=True, block_size=128, interpret=True)
    dense = attention(q, k, v, seg, seg, implementation="dense")
    real = np.asarray(seg != 0)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(dense)[real], atol=2e-5)


def test_a_shared_key_is_seen_by_the_segments_its_bits_name():
    """Context keys listed once with a negative id (the set of segments 1-31 that see them) give what listing
    them once per segment gives; segment 32 and later are named by no bit."""
    q, _, _ = _qkv(1, 12, 12, seed=10)
    _, k, v = _qkv(1, 8, 8, seed=11)  # the shared context
    _, kc, vc = _qkv(1, 12, 12, seed=12)  # the chunk's own keys
    q_seg = jnp.asarray([[1] * 4 + [3] * 5 + [32] * 3], jnp.int32)
    q_pos = jnp.arange(12, dtype=jnp.int32)[None]
    shared = jnp.asarray([[-(1 | 4)] * 6 + [-1] * 2], jnp.int32)  # 6 keys seen by segments 1 and 3, 2 by 1 only
    once = attention(q, jnp.concatenate([k, kc], 1), jnp.concatenate([v, vc], 1), q_seg,
                     jnp.concatenate([shared, q_seg], 1), q_pos,
                     jnp.concatenate([jnp.full((1, 8), -1, jnp.int32), q_pos], 1), implementation="blockwise",
                     block_size=4)
    listed = jnp.asarray([[1] * 8 + [3] * 6 + [0] * 2], jnp.int32)  # each segment's context listed for it
    keys, values = (jnp.concatenate([x, x[:, :6], x[:, :2], xc], 1) for x, xc in ((k, kc), (v, vc)))
    kv_pos = jnp.concatenate([jnp.full((1, 16), -1, jnp.int32), q_pos], 1)
    apart = attention(q, keys, values, q_seg, jnp.concatenate([listed, q_seg], 1), q_pos, kv_pos,
                      implementation="dense")
    np.testing.assert_allclose(np.asarray(once), np.asarray(apart), atol=1e-5, rtol=1e-5)
    dense = attention(q, jnp.concatenate([k, kc], 1), jnp.concatenate([v, vc], 1), q_seg,
                      jnp.concatenate([shared, q_seg], 1), q_pos,
                      jnp.concatenate([jnp.full((1, 8), -1, jnp.int32), q_pos], 1), implementation="dense")
    np.testing.assert_allclose(np.asarray(dense), np.asarray(apart), atol=1e-5, rtol=1e-5)
