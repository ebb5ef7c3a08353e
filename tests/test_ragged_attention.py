"""The ragged KV pool (`tooln1.models.ragged_attention`): its pure-JAX attention against JAX's own reference of
the TPU kernel (`ref_ragged_paged_attention`), which defines what the kernel computes, and its writes."""
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas.ops.tpu.ragged_paged_attention.kernel import ref_ragged_paged_attention

from tooln1.models import ragged_attention
from tooln1.platform.kv_storage import BFLOAT16_BITS, load

L, N, PS, KV, GROUPS, D, M = 3, 30, 4, 2, 3, 8, 6


def _case(seed: int):
    """Four sequences, then an unused row: a prefill of 5 queries over 13 slots, a decode step, a prefill of
    a whole prompt (queries = slots) and a long decode over a full table; pages in random order."""
    rng = np.random.RandomState(seed)
    q_lens, lengths = np.array([5, 1, 7, 1, 0]), np.array([13, 9, 7, M * PS, 0], np.int32)
    starts = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    table = np.zeros((5, M), np.int32)
    table[:4] = rng.permutation(np.arange(1, N))[:4 * M].reshape(4, M)
    pool = rng.randn(L, N, PS, 2 * KV, D).astype(np.float32)
    q = rng.randn(int(starts[-1]) + 3, KV * GROUPS, D).astype(np.float32)  # 3 padding rows
    return q, pool, lengths, starts, table


@pytest.mark.parametrize("layer", [0, 2])
def test_reference_computes_what_the_kernel_is_defined_to(layer):
    q, pool, lengths, starts, table = _case(0)
    got = ragged_attention.attention(jnp.asarray(q), jnp.asarray(pool), jnp.asarray(lengths), jnp.asarray(starts),
                                     jnp.asarray(table), layer)
    real = int(starts[4])
    want = ref_ragged_paged_attention(jnp.asarray(q[:real]), jnp.asarray(pool[layer]), jnp.asarray(lengths[:4]),
                                      jnp.asarray(table[:4]), jnp.asarray(starts[:5]), jnp.array([4], jnp.int32),
                                      sm_scale=D ** -0.5)
    np.testing.assert_allclose(np.asarray(got[:real]), np.asarray(want), atol=1e-5, rtol=1e-5)
    assert not np.asarray(got[real:]).any()  # padding rows: zeros
    # the kernel's layer is page l * N + p of the pool's merged [L * N] pages: the same numbers
    merged = ref_ragged_paged_attention(jnp.asarray(q[:real]), jnp.asarray(pool.reshape(L * N, PS, 2 * KV, D)),
                                        jnp.asarray(lengths[:4]), jnp.asarray(table[:4] + layer * N),
                                        jnp.asarray(starts[:5]), jnp.array([4], jnp.int32), sm_scale=D ** -0.5)
    np.testing.assert_allclose(np.asarray(merged), np.asarray(want), atol=1e-6)


def test_slots_past_a_sequences_length_and_other_pages_are_never_read():
    q, pool, lengths, starts, table = _case(1)
    base = ragged_attention.attention(q, pool, lengths, starts, table, 1)
    poisoned = np.full_like(pool, 1e4)
    for s in range(4):
        for slot in range(lengths[s]):
            page, offset = table[s, slot // PS], slot % PS
            poisoned[1, page, offset] = pool[1, page, offset]
    got = ragged_attention.attention(q, poisoned, lengths, starts, table, 1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(base), atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, BFLOAT16_BITS])
def test_write_interleaves_keys_and_values_by_head(dtype):
    rng = np.random.RandomState(2)
    pool = jnp.zeros((L, N, PS, 2 * KV, D), dtype)
    k, v = (jnp.asarray(rng.randn(3, KV, D), jnp.float32) for _ in range(2))
    pages, offsets = jnp.array([5, 5, 9]), jnp.array([0, 3, 2])
    out = ragged_attention.write(pool, 2, k, v, pages, offsets)
    assert out.dtype == dtype
    got = np.array(load(out).astype(jnp.float32))
    tol = 1e-2 if dtype == BFLOAT16_BITS else 0
    for t in range(3):
        slot = got[2, int(pages[t]), int(offsets[t])]
        np.testing.assert_allclose(slot[0::2], np.asarray(k[t]), atol=tol * 10, rtol=tol)
        np.testing.assert_allclose(slot[1::2], np.asarray(v[t]), atol=tol * 10, rtol=tol)
    got[2, [5, 5, 9], [0, 3, 2]] = 0
    assert not got.any()  # nothing else written
    copied = np.asarray(ragged_attention.copy_pages(out, jnp.array([5]), jnp.array([7])))
    np.testing.assert_array_equal(copied[:, 7], np.asarray(out)[:, 5])


def test_kernel_fits_heads_of_128_lanes():
    assert ragged_attention.kernel_fits(128) and ragged_attention.kernel_fits(256)
    assert not ragged_attention.kernel_fits(64)
