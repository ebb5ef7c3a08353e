"""Paged attention against the dense reference (`attention(implementation="dense")` over each sequence's tokens laid
out contiguously), with pages scattered over the pool in random order and ragged lengths."""
import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tooln1.models.attention import attention
from tooln1.models.paged_attention import (
    gather_pages,
    page_shape,
    prefix_groups,
    ragged_paged_attention,
    sharded_paged_attention,
    write_pages,
    write_rows,
)
from tooln1.platform.kv_storage import BFLOAT16_BITS, pool_dtype

KV, GROUPS, D, PS, M, N = 2, 3, 8, 4, 5, 40


def _setup(seed: int):
    rng = np.random.RandomState(seed)
    lengths = np.array([1, 7, 20, 13], np.int32)  # 20 = a full table of M * PS slots
    s = len(lengths)
    table = rng.permutation(np.arange(1, N))[: s * M].reshape(s, M).astype(np.int32)
    k_pool = rng.randn(KV, N, PS, D).astype(np.float32)
    v_pool = rng.randn(KV, N, PS, D).astype(np.float32)
    q = rng.randn(s, KV * GROUPS, D).astype(np.float32)
    return q, k_pool, v_pool, lengths, table


@pytest.fixture
def gpu_kernel_interpreted(monkeypatch):
    """JAX's Pallas GPU kernel run by Pallas' interpreter (no GPU here): the same kernel program, on a CPU."""
    import functools

    from jax.experimental.pallas.ops.gpu.paged_attention import paged_attention

    monkeypatch.setattr("tooln1.models.paged_attention._gpu_kernel",
                        lambda: functools.partial(paged_attention, interpret=True))


@pytest.mark.parametrize("pages_per_block", [1, 2, 8])
def test_ragged_paged_attention_equals_dense(pages_per_block):
    q, k_pool, v_pool, lengths, table = _setup(0)
    got = ragged_paged_attention(jnp.asarray(q), jnp.asarray(k_pool), jnp.asarray(v_pool), jnp.asarray(lengths),
                                 jnp.asarray(table), pages_per_block=pages_per_block, backend="jax")
    for s in range(len(lengths)):
        k = gather_pages(jnp.asarray(k_pool), jnp.asarray(table[s]))[None]  # [1, M*PS, KV, D]
        v = gather_pages(jnp.asarray(v_pool), jnp.asarray(table[s]))[None]
        kv_seg = (jnp.arange(M * PS) < lengths[s]).astype(jnp.int32)[None]
        ref = attention(jnp.asarray(q[s])[None, None], k, v, jnp.ones((1, 1), jnp.int32), kv_seg, causal=False,
                        implementation="dense")[0, 0]
        np.testing.assert_allclose(np.asarray(got[s]), np.asarray(ref), atol=1e-5, rtol=1e-5)


def test_slots_past_the_length_and_other_pages_are_never_read():
    q, k_pool, v_pool, lengths, table = _setup(1)
    base = ragged_paged_attention(q, k_pool, v_pool, lengths, table, pages_per_block=2, backend="jax")
    poisoned_k, poisoned_v = k_pool.copy(), v_pool.copy()
    used = np.zeros((N, PS), bool)
    for s, n in enumerate(lengths):
        for t in range(n):
            used[table[s, t // PS], t % PS] = True
    poisoned_k[:, ~used], poisoned_v[:, ~used] = 1e4, -1e4
    again = ragged_paged_attention(q, poisoned_k, poisoned_v, lengths, table, pages_per_block=2, backend="jax")
    np.testing.assert_array_equal(np.asarray(again), np.asarray(base))
    # and the poison does reach attention when a length covers it
    longer = ragged_paged_attention(q, poisoned_k, poisoned_v, np.minimum(lengths + 1, M * PS), table,
                                    pages_per_block=2, backend="jax")
    assert not np.allclose(np.asarray(longer)[:2], np.asarray(base)[:2])


def test_write_then_gather_roundtrip():
    pool = jnp.zeros((KV, 3, N, PS, D))  # every layer's
    new = jnp.arange(5 * KV * D, dtype=jnp.float32).reshape(5, KV, D)
    pages, offsets = jnp.array([7, 7, 3, 9, 9]), jnp.array([0, 1, 3, 2, 3])
    layer = jnp.asarray(2)  # traced-style index
    pool = jax.jit(write_pages)(pool, layer, new, pages, offsets)
    assert float(jnp.abs(pool[:, :2]).sum()) == 0.0
    seq = gather_pages(pool[:, 2], jnp.array([7, 3]))  # [2*PS, KV, D]
    np.testing.assert_array_equal(np.asarray(seq[0]), np.asarray(new[0]))
    np.testing.assert_array_equal(np.asarray(seq[1]), np.asarray(new[1]))
    np.testing.assert_array_equal(np.asarray(seq[PS + 3]), np.asarray(new[2]))
    # from all layers' pools with a layer index: the same sequence
    np.testing.assert_array_equal(np.asarray(jax.jit(gather_pages)(pool, jnp.array([7, 3]), layer)), np.asarray(seq))


def test_pools_of_128_lane_rows_hold_the_same_tokens():
    """A head narrower than 128 lanes is stored in rows of 128 (TPU tiles pad a narrower minor dim): writes,
    gathers and attention see the same tokens as in a [page_size, D] pool."""
    assert page_shape(16, 64) == (8, 128) and page_shape(16, 128) == (16, 128) and page_shape(16, 96) == (16, 96)
    assert page_shape(4, 8) == (4, 8)  # a page smaller than one row stays as it is
    d, ps = 32, 8
    rows, width = page_shape(ps, d)
    assert (rows, width) == (2, 128)
    rng = np.random.RandomState(5)
    lengths = np.array([1, 9, 40, 23], np.int32)
    table = rng.permutation(np.arange(1, N))[: 4 * M].reshape(4, M).astype(np.int32)
    plain = [jnp.asarray(rng.randn(KV, 2, N, ps, d), jnp.float32) for _ in range(2)]  # [KV, L, N, ps, D]
    new = jnp.asarray(rng.randn(6, KV, d), jnp.float32)
    pages, offsets = jnp.array([3, 3, 3, 3, 11, 11]), jnp.array([0, 3, 4, 7, 5, 6])  # both halves of rows
    plain = [jax.jit(write_pages)(pool, 1, new, pages, offsets) for pool in plain]
    lanes = [pool.reshape(KV, 2, N, rows, width) for pool in plain]
    written = [jax.jit(write_pages)(pool.reshape(KV, 2, N, rows, width) * 0 + 7, 1, new, pages, offsets)
               for pool in plain]
    seq = gather_pages(written[0], jnp.array([3, 11]), 1, head_dim=d)  # [2*ps, KV, D]
    np.testing.assert_array_equal(np.asarray(seq[jnp.array([0, 3, 4, 7, ps + 5, ps + 6])]), np.asarray(new))
    untouched = np.ones(2 * ps, bool)
    untouched[[0, 3, 4, 7, ps + 5, ps + 6]] = False
    assert np.all(np.asarray(seq)[untouched] == 7)
    np.testing.assert_array_equal(np.asarray(gather_pages(lanes[0], jnp.asarray(table[2]), 1, head_dim=d)),
                                  np.asarray(gather_pages(plain[0], jnp.asarray(table[2]), 1)))
    q = jnp.asarray(rng.randn(4, KV * GROUPS, d), jnp.float32)
    want = ragged_paged_attention(q, *plain, lengths, table, pages_per_block=2, backend="jax", layer=1)
    got = ragged_paged_attention(q, *lanes, lengths, table, pages_per_block=2, backend="jax", layer=1)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _chunk_writes(ps: int) -> tuple[np.ndarray, np.ndarray]:
    """(pages, offsets) of a packed prefill chunk: a run from mid-row across a page boundary into another
    page's first rows, a run of two tokens ending mid-row, a one-token run at a page's last slot, a run
    from a page's first slot, a run whose row-mate slot the previous run writes on another page, then
    padding on the scratch page 0."""
    runs = [(3, 5, ps + 3), (7, 1, 2), (9, ps - 1, 1), (11, 0, ps - 2), (5, 2, 1), (13, 3, 2)]
    pages, offsets = [], []
    for first_page, first, n in runs:
        slots = np.arange(first, first + n)
        pages += list(first_page + slots // ps)
        offsets += list(slots % ps)
    return np.array(pages + [0] * 3, np.int32), np.array(offsets + [0] * 3, np.int32)


@pytest.mark.parametrize("d,ps", [(32, 8), (64, 16), (16, 8), (128, 4), (8, 4)])
@pytest.mark.parametrize("dtype", [jnp.float32, BFLOAT16_BITS])
def test_row_writes_equal_token_writes(d, ps, dtype):
    """`write_rows` (the TPU's whole-row writes) leaves every page but the scratch page 0 as `write_pages`
    does, for a packed prefill chunk's runs and a decode step's one token per slot, in rows of one token
    (d 128; page 4 x 8 is narrower than a row) and of several (2 x 64, 4 x 32, 8 x 16)."""
    rows, width = page_shape(ps, d)
    rng = np.random.RandomState(d + ps)
    pool = jnp.asarray(rng.randn(KV, 3, 16, rows, width), jnp.float32)
    if dtype == BFLOAT16_BITS:
        pool = jax.lax.bitcast_convert_type(pool.astype(jnp.bfloat16), BFLOAT16_BITS)
    decode = (np.array([4, 0, 6, 12, 0], np.int32), np.array([ps - 1, 0, 2, 1, 0], np.int32))  # slots 1, 4 idle
    for pages, offsets in (_chunk_writes(ps), decode):
        new = jnp.asarray(rng.randn(len(pages), KV, d), jnp.float32)
        want = jax.jit(write_pages)(pool, 1, new, jnp.asarray(pages), jnp.asarray(offsets))
        got = jax.jit(write_rows)(pool, jnp.asarray(1), new, jnp.asarray(pages), jnp.asarray(offsets))
        assert got.dtype == pool.dtype
        assert not np.array_equal(np.asarray(want), np.asarray(pool))
        np.testing.assert_array_equal(np.asarray(got)[:, :, 1:], np.asarray(want)[:, :, 1:])


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (pip install 'jax[tpu]')")
def test_row_writes_compile_to_no_loop_on_a_tpu():
    """Compiled for a TPU v5e (libtpu, no TPU): `write_pages` at Qwen2.5-0.5B's heads (2 x 64, rows of 2 tokens)
    is a loop of one step per token and kv head, `write_rows` a loop-free scatter; the engine writes rows
    on a TPU mesh and tokens here."""
    from tooln1.models.config import preset
    from tooln1.platform.decode_layout import DecodeLayout
    from tooln1.preflight.targets import get_target, target_devices

    device = target_devices(get_target("tpu-v5e-4"))[0]
    mesh = jax.sharding.Mesh(np.array([device]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    config = preset("qwen2.5-0.5b")
    assert DecodeLayout.of(config, mesh).kv_writes == "rows" and DecodeLayout.of(config, None).kv_writes == "tokens"
    sharding = jax.sharding.SingleDeviceSharding(device)
    rows, width = page_shape(16, 64)
    tokens = 512
    args = (jax.ShapeDtypeStruct((2, 2, 64, rows, width), jnp.bfloat16, sharding=sharding),
            jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding),
            jax.ShapeDtypeStruct((tokens, 2, 64), jnp.bfloat16, sharding=sharding),
            *[jax.ShapeDtypeStruct((tokens,), jnp.int32, sharding=sharding)] * 2)
    hlo = lambda write: jax.jit(write).lower(*args).compile().as_text()  # noqa: E731
    assert " while(" in hlo(write_pages)
    assert " while(" not in hlo(write_rows)


def test_all_layer_pools_with_a_layer_index_read_that_layer():
    q, k_pool, v_pool, lengths, table = _setup(2)
    k_all, v_all = np.stack([k_pool * 0.5, k_pool], axis=1), np.stack([-v_pool, v_pool], axis=1)  # [KV, L, N, PS, D]
    one = ragged_paged_attention(q, k_pool, v_pool, lengths, table, backend="jax")
    got = jax.jit(lambda layer: ragged_paged_attention(q, k_all, v_all, lengths, table, backend="jax", layer=layer))(1)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(one))


def test_bfloat16_pages_held_as_bits_read_as_bfloat16():
    """A CPU holds bf16 KV pages as uint16 bits: writes round to bf16, and attention and gathers read
    exactly the bf16 pool's values."""
    assert pool_dtype(jnp.bfloat16, "cpu") == BFLOAT16_BITS and pool_dtype(jnp.bfloat16, "tpu") == jnp.bfloat16
    assert pool_dtype(jnp.float16, "cpu") == jnp.float32 and pool_dtype(jnp.float32, "cpu") == jnp.float32
    q, k_pool, v_pool, lengths, table = _setup(3)
    bits = lambda pool: jax.lax.bitcast_convert_type(jnp.asarray(pool, jnp.bfloat16), BFLOAT16_BITS)  # noqa: E731
    want = ragged_paged_attention(q, jnp.asarray(k_pool, jnp.bfloat16), jnp.asarray(v_pool, jnp.bfloat16), lengths,
                                  table, pages_per_block=2, backend="jax")
    got = ragged_paged_attention(q, bits(k_pool), bits(v_pool), lengths, table, pages_per_block=2, backend="jax")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    new = jnp.asarray(np.random.RandomState(4).randn(2, KV, D), jnp.float32)
    pool = jax.jit(write_pages)(jnp.zeros((KV, 1, N, PS, D), BFLOAT16_BITS), 0, new, jnp.array([5, 5]),
                                jnp.array([0, 1]))
    seq = gather_pages(pool, jnp.array([5]), 0)
    assert seq.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(seq[:2], np.float32), np.asarray(new.astype(jnp.bfloat16), np.float32))


@pytest.mark.parametrize("mesh_shape", [{"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": 2, "tensor": 4}])
@pytest.mark.usefixtures("gpu_kernel_interpreted")
def test_kernel_path_runs_per_device_shard(monkeypatch, mesh_shape):
    """The engine's batch shards (each its own pool, pages numbered within it): the kernel path runs on
    each device's shard under shard_map (kv heads split with their query heads when the tensor axis
    divides them) on every layer's pages as one pool (layer l's page p at l * N + p), the pure-JAX path
    vmaps over the shards; all give every shard's own attention. The TPU kernel is stood in for by the
    pure-JAX one (no TPU here), the GPU one runs in Pallas' interpreter."""
    from tooln1.models import paged_attention as pa
    from tooln1.sharding import batch_shards, make_mesh

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets 8 host CPU devices)")
    mesh = make_mesh(mesh_shape)
    x = batch_shards(mesh)
    shards = [_setup(seed) for seed in range(x)]  # per shard: q [S, H, D], pools [KV, N, PS, D], lengths, table
    q, k, v, lengths, table = (np.stack([s[i] for s in shards]) for i in range(5))
    layers = lambda pool: np.stack([pool * 0.5, pool], axis=2)  # noqa: E731  [X, KV, L=2, N, PS, D]
    k, v = layers(k), layers(v)
    want = [ragged_paged_attention(shards[i][0], k[i], v[i], lengths[i], table[i], backend="jax", layer=1)
            for i in range(x)]
    # the kernel's contract: one layer's pools [KV, N, PS, D], a pre-scaled query
    kernel = lambda q, kp, vp, n, t, pages_per_compute_block, megacore_mode: pa._reference_blocks(  # noqa: E731
        q * q.shape[-1] ** 0.5, kp, vp, n, t, pages_per_compute_block, None)
    monkeypatch.setattr(pa, "_tpu_kernel", lambda: kernel)
    for backend in ("jax", "pallas", "pallas_gpu"):
        got = jax.jit(functools.partial(pa.sharded_paged_attention, layer=1, mesh=mesh, backend=backend))(
            q, k, v, lengths, table)
        for i in range(x):
            np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want[i]), atol=1e-5, rtol=1e-5,
                                       err_msg=f"{backend} shard {i}")


@pytest.mark.usefixtures("gpu_kernel_interpreted")
@pytest.mark.parametrize("pages_per_block", [1, 2, 8])
def test_gpu_kernel_equals_the_portable_path(pages_per_block):
    """bf16 pools, every layer's pages as one pool (layer 1 read), pages past each length poisoned: the GPU
    kernel's table of 5 pages is padded to whole partitions of power-of-two blocks (pages_per_block 1: 5
    partitions of one page; 2: 3 of two; 8: 2 of four) and must read what the pure-JAX path reads, from
    pools of 128-lane rows (`page_shape`: 4 tokens x 32 in one row) where the pure-JAX path reads
    [page_size, D] ones."""
    _, _, _, lengths, table = _setup(3)
    d = 32
    rng = np.random.RandomState(4)
    q = rng.randn(len(lengths), KV * GROUPS, d).astype(np.float32)
    k_pool, v_pool = (rng.randn(KV, 2, N, PS, d).astype(np.float32) for _ in range(2))
    used = np.zeros(N, bool)
    for s, n in enumerate(lengths):
        used[table[s, : -(-n // PS)]] = True
    k_pool[:, 1, ~used], v_pool[:, 1, ~used] = 1e4, -1e4  # poison: pages no sequence reaches
    bf16 = lambda x: jnp.asarray(x, jnp.bfloat16)  # noqa: E731
    args = (bf16(q), bf16(k_pool), bf16(v_pool), jnp.asarray(lengths), jnp.asarray(table))
    want = ragged_paged_attention(*args, pages_per_block=pages_per_block, backend="jax", layer=1)
    assert page_shape(PS, d) == (1, 128)
    args = (args[0], *(pool.reshape(KV, 2, N, 1, 128) for pool in args[1:3]), *args[3:])
    got = jax.jit(lambda *a: ragged_paged_attention(*a, pages_per_block=pages_per_block, backend="pallas_gpu",
                                                    layer=1))(*args)
    assert got.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(got.astype(jnp.float32))))
    # what Triton lowers: compute blocks of a power of two of pages, partitions of whole blocks
    calls = []
    from tooln1.models import paged_attention as pa

    kernel = pa._gpu_kernel()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pa, "_gpu_kernel", lambda: lambda q, k, v, t, n, **kw: calls.append((t.shape, kw)) or kernel(
            q, k, v, t, n, **kw))
        ragged_paged_attention(*args, pages_per_block=pages_per_block, backend="pallas_gpu", layer=1)
    (table_shape, kw), = calls
    block = kw["pages_per_compute_block"]
    assert block & (block - 1) == 0 and table_shape[1] % (block * kw["k_splits"]) == 0
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=2e-2, rtol=2e-2)


def test_backend_choice_by_platform_dtype_and_shape(monkeypatch):
    """TPU kernel for head sizes of 128s, the GPU kernel for 16-bit KV with power-of-two head and page sizes,
    the portable path otherwise (and always on a CPU)."""
    from tooln1.models import paged_attention as pa

    cases = [("tpu", 128, 16, jnp.bfloat16, "pallas"), ("tpu", 64, 16, jnp.bfloat16, "jax"),
             ("gpu", 128, 16, jnp.bfloat16, "pallas_gpu"), ("cuda", 64, 16, jnp.float16, "pallas_gpu"),
             ("gpu", 128, 16, jnp.float32, "jax"), ("gpu", 80, 16, jnp.bfloat16, "jax"),
             ("gpu", 128, 12, jnp.bfloat16, "jax"), ("cpu", 128, 16, jnp.bfloat16, "jax")]
    for target, head_dim, page_size, dtype, want in cases:
        monkeypatch.setattr(pa, "platform", lambda mesh, t=target: t)
        assert pa._backend(None, head_dim, page_size, dtype, None) == want, (target, head_dim, page_size, dtype)
    assert pa._backend("jax", 128, 16, jnp.bfloat16, None) == "jax"


def _shared_prefix_setup(dtype):
    """Seven sequences: three samples of prompt A (5 shared pages), two of B (2), one prompt that shares A's
    first 2 pages only (cached prefix, then its own), one sharing nothing; each with private pages after."""
    rng = np.random.RandomState(3)
    kv, layers, n, ps, d, heads = 2, 2, 64, 4, 8, 6
    prefixes = [[1, 2, 3, 4, 5], [6, 7], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [6, 7], [1, 2, 8, 9], []]
    table = np.zeros((len(prefixes), 12), np.int32)
    lengths, shared = np.zeros(len(prefixes), np.int32), np.zeros(len(prefixes), np.int32)
    free = iter(range(10, n))
    for s, prefix in enumerate(prefixes):
        own = [next(free) for _ in range(3)]
        table[s, :len(prefix) + 3] = prefix + own
        shared[s], lengths[s] = len(prefix), len(prefix) * ps + rng.randint(1, 3 * ps)
    pools = [rng.randn(kv, layers, n, ps, d).astype(np.float32) for _ in range(2)]
    if dtype == "bfloat16":
        pools = [np.asarray(jnp.asarray(p, jnp.bfloat16).view(BFLOAT16_BITS)) for p in pools]
    q = rng.randn(len(prefixes), heads, d).astype(np.float32)
    return q, pools, lengths, table, shared, ps


def test_prefix_groups_gather_the_samples_of_a_prompt():
    _, _, _, table, shared, ps = _shared_prefix_setup("float32")
    groups = prefix_groups(jnp.asarray(table), jnp.asarray(shared), ps, 2)
    members = {tuple(sorted(int(m) for m in row if m < len(table))) for row in np.asarray(groups.members)}
    # A's three samples in groups of at most 2, B's two together; the cached-prefix prompt and the one
    # sharing nothing alone
    assert members - {()} == {(0, 2), (3,), (1, 4), (5,), (6,)}
    for s in range(len(table)):
        assert groups.members[groups.group[s], groups.member[s]] == s
    # a group of one (A's third sample, the cached-prefix prompt) reads all its pages in its own pass
    assert np.asarray(groups.start).tolist() == [20, 8, 20, 0, 8, 0, 0]
    assert sorted(np.asarray(groups.shared_len)[np.asarray(groups.shared_len) > 0]) == [8, 20]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("per_group", [1, 2, 4])
def test_grouped_reads_equal_each_sequence_reading_its_own_pages(dtype, per_group):
    """Decode attention with shared pages read once a group equals each sequence over all of its pages."""
    q, (k_pool, v_pool), lengths, table, shared, ps = _shared_prefix_setup(dtype)
    groups = prefix_groups(jnp.asarray(table), jnp.asarray(shared), ps, per_group)
    for layer in (0, 1):
        ref = ragged_paged_attention(q, k_pool, v_pool, lengths, table, pages_per_block=2, backend="jax", layer=layer)
        got = sharded_paged_attention(q[None], k_pool[None], v_pool[None], lengths[None], table[None], layer,
                                      pages_per_block=2, backend="jax",
                                      groups=jax.tree.map(lambda x: x[None], groups))[0]
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-6 if dtype == "float32" else 2e-2)
        # a shared page poisoned changes every sequence that shares it, and only those
        poisoned = [np.array(p) for p in (k_pool, v_pool)]
        for p in poisoned:
            p[:, layer, 3] = 7 if dtype == "float32" else np.asarray(jnp.asarray(7.0, jnp.bfloat16).view(BFLOAT16_BITS))
        bad = sharded_paged_attention(q[None], *(p[None] for p in poisoned), lengths[None], table[None], layer,
                                      pages_per_block=2, backend="jax",
                                      groups=jax.tree.map(lambda x: x[None], groups))[0]
        changed = np.abs(np.asarray(bad) - np.asarray(got)).max(axis=(1, 2)) > 1e-3
        assert changed.tolist() == [True, False, True, True, False, False, False]
