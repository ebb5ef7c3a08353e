"""The rollout engine's invariants: a sample depends on (seed, prompt index, sample index) only, not on
the slots, pages, chunks or prompt order; a freed page never leaks into its next owner; the compiled
program does not grow with the number of prompts; finished groups reach ``on_group``."""
import dataclasses
import functools

import jax
import numpy as np
import pytest

import tooln1.rollout.engine
from tooln1.checkpoints.hf_import import load_model
from tooln1.checkpoints.tiny import make_tiny_checkpoint, special_token_ids
from tooln1.models.chunk_attention import chunk_attention, splash_chunk_attention
from tooln1.platform.decode_layout import DecodeLayout
from tooln1.rollout.engine import Engine, EngineConfig
from tooln1.rollout.sampling import SamplingConfig, compiled_programs

LENGTHS = [1, 9, 23, 4, 15]
G, R = 3, 12
# One slot, pages of 4, chunks of 8 (prompts span chunks and share them), 3 steps a round...
ONE_SLOT = EngineConfig(num_slots=1, page_size=4, prefill_chunk=8, steps_per_round=3)
# ... versus five slots with other page, chunk, attention block and round sizes.
FIVE_SLOTS = EngineConfig(num_slots=5, page_size=8, prefill_chunk=16, prefill_block=4, steps_per_round=4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("engine") / "tiny"), nonzero_biases=True, init_std=0.3,
                                seed=3)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint, dtype="float32")


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.RandomState(0)
    return [rng.randint(0, 2990, n).astype(np.int32) for n in LENGTHS]


@pytest.fixture(scope="module")
def sampling():
    # a seventh of the vocabulary ends a response: lengths from 1 to the cap
    pad = special_token_ids()["<|endoftext|>"]
    return SamplingConfig(num_samples=G, max_new_tokens=R, temperature=0.9, top_k=50,
                          eos_ids=tuple(range(0, 2990, 7)), pad_id=pad)


def poisoned_pages(monkeypatch) -> list[int]:
    """From now on every page the engine frees, or evicts from its prefix cache for a new owner, is overwritten with
    1e4 before the next program runs (in every shard's pool); returns the list of those pages."""
    pages: list[int] = []
    dirty: list[int] = []
    release, take = tooln1.rollout.engine._PagePool.release, tooln1.rollout.engine._PagePool.take

    def releasing(pool, held):
        before = len(pool.free)
        release(pool, held)
        dirty.extend(pool.free[before:])

    def taking(pool, n):
        idle = set(pool.idle)
        out = take(pool, n)
        dirty.extend(page for page in out if page in idle)
        return out

    def poisoning(program):
        def run(**kwargs):
            if dirty:
                at = np.asarray(dirty, np.int32)
                kwargs["pools"] = tuple(pool.at[:, :, :, at].set(1e4) for pool in kwargs["pools"])
                pages.extend(dirty)
                dirty.clear()
            return program(**kwargs)

        return run

    monkeypatch.setattr(tooln1.rollout.engine._PagePool, "release", releasing)
    monkeypatch.setattr(tooln1.rollout.engine._PagePool, "take", taking)
    for name in ("run_prefill", "run_round"):
        monkeypatch.setattr(tooln1.rollout.engine, name, poisoning(getattr(tooln1.rollout.engine, name)))
    return pages


@pytest.fixture(scope="module")
def one_slot(model, prompts, sampling):
    engine = Engine(model, ONE_SLOT)
    results, _ = engine.generate(prompts, sampling, jax.random.key(5), max_prompt_len=max(LENGTHS))
    return results


def test_samples_do_not_depend_on_slots_pages_or_prompt_order(model, prompts, sampling, one_slot):
    lengths = [len(c.tokens) for group in one_slot for c in group]
    assert min(lengths) < R and max(lengths) == R, "the test needs early stops and truncations"
    order = [4, 2, 0, 3, 1]
    seen = []
    engine = Engine(model, FIVE_SLOTS)
    results, scored = engine.generate([prompts[i] for i in order], sampling, jax.random.key(5),
                                      max_prompt_len=max(LENGTHS), indices=order,
                                      on_group=lambda i, group: seen.append(i) or [len(c.tokens) for c in group])
    for j, i in enumerate(order):
        for g in range(G):
            np.testing.assert_array_equal(results[j][g].tokens, one_slot[i][g].tokens, err_msg=f"prompt {i} sample {g}")
            np.testing.assert_allclose(results[j][g].logprobs, one_slot[i][g].logprobs, atol=1e-4, rtol=0)
    # the samples of one prompt differ, and so do prompts
    assert len({tuple(c.tokens) for c in one_slot[2]}) == G
    # every group reached on_group once; its results come back in list order
    assert sorted(seen) == list(range(len(order)))
    assert scored == [[len(c.tokens) for c in group] for group in results]
    assert engine.stats["slots"] == 5 and engine.stats["prefill_tokens"] == sum(n - 1 for n in LENGTHS)
    # keys attended, summed: a prompt's prefilled positions 0..n-2 attend to 1..n-1 keys; a response of r
    # tokens decodes r steps over the prompt's n keys and then one more a step
    assert engine.stats["prefill_context_tokens"] == sum((n - 1) * n // 2 for n in LENGTHS)
    assert engine.stats["decode_context_tokens"] == sum(
        r * LENGTHS[i] + r * (r - 1) // 2 for j, i in enumerate(order) for r in (len(c.tokens) for c in results[j]))
    assert 0 < engine.stats["prefill_rounds_s"] < engine.stats["device_s"]  # rounds that prefill are timed apart
    # the tail decoded narrower than all five slots (live slots compacted to the front), same samples
    assert engine.stats["width_steps"] < 5 * engine.stats["decode_steps"]


def test_weights_split_per_layer_sample_the_same(model, prompts, sampling, one_slot):
    """The decoding copy with one array per layer, run unrolled (the CPU layout of large models), samples
    what the stacked weights sample."""
    assert not DecodeLayout.of(model.config, None).per_layer  # "auto": the tiny model's kernels are too small to pay
    big = dataclasses.replace(model.config, hidden_size=896, intermediate_size=4864)
    assert DecodeLayout.of(big, None).per_layer and not DecodeLayout.of(big, None, "stacked").per_layer
    with pytest.raises(ValueError, match="layer_layout"):
        EngineConfig(layer_layout="unrolled")
    engine = Engine(model, dataclasses.replace(ONE_SLOT, layer_layout="per_layer"))
    layers = engine.weights["layers"]
    assert len(layers) == model.config.num_layers
    assert layers[1]["mlp"]["down_kernel"][...].shape == model.layers.mlp.down_kernel[...].shape[1:]
    np.testing.assert_array_equal(np.asarray(layers[1]["mlp"]["down_kernel"][...]),
                                  np.asarray(model.layers.mlp.down_kernel[...][1]))
    engine.release()  # as the trainer does during an update; refresh brings the copy back
    with pytest.raises(RuntimeError, match="released"):
        engine.generate(prompts, sampling, jax.random.key(5), max_prompt_len=max(LENGTHS))
    engine.refresh(model)
    results, _ = engine.generate(prompts, sampling, jax.random.key(5), max_prompt_len=max(LENGTHS))
    for i in range(len(prompts)):
        for g in range(G):
            np.testing.assert_array_equal(results[i][g].tokens, one_slot[i][g].tokens, err_msg=f"prompt {i} sample {g}")
            np.testing.assert_allclose(results[i][g].logprobs, one_slot[i][g].logprobs, atol=1e-4, rtol=0)


def test_tpu_copy_stores_qkv_heads_major_and_samples_the_same(model, prompts, sampling, one_slot, monkeypatch):
    """On a TPU the decoding copy stores the q/k/v kernels [layers, heads, embed, D], the layout XLA:TPU's
    decode matmuls read (it copied the stacks into it every round); it samples what the plain copy samples."""
    import tooln1.platform.decode_layout

    monkeypatch.setattr(tooln1.platform.decode_layout, "platform", lambda mesh: "tpu")  # attention stays pure JAX
    monkeypatch.setattr(tooln1.platform.decode_layout, "prefill_attention", lambda config, target: "blockwise")
    engine = Engine(model, ONE_SLOT)
    c, attention = model.config, engine.weights["layers"]["attention"]
    assert attention["q_kernel"][...].shape == (c.num_layers, c.num_heads, c.hidden_size, c.head_dim)
    assert attention["k_kernel"][...].shape == (c.num_layers, c.num_kv_heads, c.hidden_size, c.head_dim)
    np.testing.assert_array_equal(np.asarray(attention["v_kernel"][...]),
                                  np.swapaxes(np.asarray(model.layers.attention.v_kernel[...]), 1, 2))
    results, _ = engine.generate(prompts, sampling, jax.random.key(5), max_prompt_len=max(LENGTHS))
    for i in range(len(prompts)):
        for g in range(G):
            np.testing.assert_array_equal(results[i][g].tokens, one_slot[i][g].tokens, err_msg=f"prompt {i} sample {g}")
            np.testing.assert_allclose(results[i][g].logprobs, one_slot[i][g].logprobs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("path", ["pallas_gpu", "splash"])
def test_fused_prefill_kernels_sample_what_the_portable_path_samples(model, prompts, sampling, one_slot, monkeypatch,
                                                                     path):
    """The prefill's fused chunk kernels (the GPU's and the TPU's, run by Pallas' interpreter) in place of the
    blockwise path sample the same (ONE_SLOT's chunks of 8 continue earlier chunks' pages, so chunks attend
    to context)."""
    import tooln1.platform.decode_layout
    import tooln1.rollout.programs

    monkeypatch.setattr(tooln1.platform.decode_layout, "prefill_attention", lambda config, target: path)
    monkeypatch.setattr(tooln1.rollout.programs, "chunk_attention", functools.partial(chunk_attention, interpret=True))
    monkeypatch.setattr(tooln1.rollout.programs, "splash_chunk_attention",
                        functools.partial(splash_chunk_attention, interpret=True))
    engine = Engine(model, ONE_SLOT)
    assert engine.layout.prefill_attention == path
    results, _ = engine.generate(prompts, sampling, jax.random.key(5), max_prompt_len=max(LENGTHS))
    for i in range(len(prompts)):
        for g in range(G):
            np.testing.assert_array_equal(results[i][g].tokens, one_slot[i][g].tokens, err_msg=f"prompt {i} sample {g}")
            np.testing.assert_allclose(results[i][g].logprobs, one_slot[i][g].logprobs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("config", [ONE_SLOT, FIVE_SLOTS], ids=["rows_of_one_token", "rows_of_eight_tokens"])
def test_tpu_row_kv_writes_sample_what_token_writes_sample(model, prompts, sampling, one_slot, monkeypatch, config):
    """The TPU's KV writes of whole rows (`write_rows`) sample what the per-token writes sample: with the tiny
    model's head of 16, ONE_SLOT's pages of 4 are rows of one token, FIVE_SLOTS' pages of 8 one 128-lane row
    of 8 tokens, written whole from a chunk's runs and a decode step's tokens with the pool's."""
    import tooln1.platform.decode_layout
    import tooln1.rollout.programs

    monkeypatch.setattr(tooln1.platform.decode_layout, "kv_writes", lambda target: "rows")
    traced = []
    write_rows = tooln1.rollout.programs.write_rows
    monkeypatch.setattr(tooln1.rollout.programs, "write_rows", lambda *a: traced.append(a[0].shape) or write_rows(*a))
    engine = Engine(model, config)
    assert engine.layout.kv_writes == "rows"
    results, _ = engine.generate(prompts, sampling, jax.random.key(5), max_prompt_len=max(LENGTHS))
    assert traced and traced[0][-1] == (128 if config is FIVE_SLOTS else model.config.head_dim)  # rows of the pool
    for i in range(len(prompts)):
        for g in range(G):
            np.testing.assert_array_equal(results[i][g].tokens, one_slot[i][g].tokens, err_msg=f"prompt {i} sample {g}")
            np.testing.assert_allclose(results[i][g].logprobs, one_slot[i][g].logprobs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("config", [ONE_SLOT, FIVE_SLOTS], ids=["one_slot", "five_slots"])
def test_ragged_pool_samples_what_split_pools_sample(model, prompts, sampling, one_slot, monkeypatch, config):
    """The TPU's ragged pool (keys and values in one pool, every prefill chunk's prompts and decode step's
    slots attending each over its own pages, `tooln1.models.ragged_attention`; here its pure-JAX reference)
    samples what the split pools sample: ONE_SLOT's chunks of 8 continue earlier chunks' pages and
    FIVE_SLOTS' chunks pack several prompts, reusing cached prefix pages."""
    import tooln1.platform.decode_layout

    monkeypatch.setattr(tooln1.platform.decode_layout, "kv_pool", lambda config, target, cores: "ragged")
    engine = Engine(model, config)
    assert engine.layout.kv_pool == "ragged" and engine.layout.prefill_attention == "ragged"
    results, _ = engine.generate(prompts, sampling, jax.random.key(5), max_prompt_len=max(LENGTHS))
    for i in range(len(prompts)):
        for g in range(G):
            np.testing.assert_array_equal(results[i][g].tokens, one_slot[i][g].tokens, err_msg=f"prompt {i} sample {g}")
            np.testing.assert_allclose(results[i][g].logprobs, one_slot[i][g].logprobs, atol=1e-4, rtol=0)


def test_bf16_cpu_copy_samples_what_the_stacked_bf16_copy_samples(checkpoint, prompts, sampling):
    """16-bit decoding on a CPU: per-layer weights, embedding rows gathered from a float32 table, an
    untied [D, V] head, bf16 KV pages stored as uint16 bits and no one-row decode width; it samples what
    the plain stacked bf16 copy (tied head, bf16 gather) samples."""
    model = load_model(checkpoint, dtype="bfloat16")
    assert DecodeLayout.of(model.config, None).per_layer  # "auto" splits any 16-bit model on a CPU
    engine = Engine(model, FIVE_SLOTS)
    assert engine.layout.kv_dtype == np.uint16 and engine.layout.narrowest == 2  # bf16 KV pages held as their bits
    assert engine.weights["embed"][...].dtype == np.float32
    assert engine.weights["lm_head"][...].dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(np.asarray(engine.weights["lm_head"][...]).T, np.asarray(model.embed[...]))
    stacked = Engine(model, dataclasses.replace(FIVE_SLOTS, layer_layout="stacked"))
    assert "lm_head" not in stacked.weights and 1 not in stacked.widths(stacked.shape(sampling, 15, 23))
    ours, _ = engine.generate(prompts, sampling, jax.random.key(5), max_prompt_len=max(LENGTHS))
    ref, _ = stacked.generate(prompts, sampling, jax.random.key(5), max_prompt_len=max(LENGTHS))
    for i in range(len(prompts)):
        for g in range(G):
            np.testing.assert_array_equal(ours[i][g].tokens, ref[i][g].tokens, err_msg=f"prompt {i} sample {g}")
            np.testing.assert_allclose(ours[i][g].logprobs, ref[i][g].logprobs, atol=0.1, rtol=0)  # bf16 rounding


def test_freed_pages_are_never_read_by_their_next_owner(model, prompts, sampling, one_slot, monkeypatch):
    poisoned = poisoned_pages(monkeypatch)
    engine = Engine(model, ONE_SLOT)
    results, _ = engine.generate(prompts, sampling, jax.random.key(5), max_prompt_len=max(LENGTHS))
    assert len(poisoned) > 2 * len(set(poisoned)), "pages must be reused for the test to mean anything"
    for i in range(len(prompts)):
        for g in range(G):
            np.testing.assert_array_equal(results[i][g].tokens, one_slot[i][g].tokens, err_msg=f"prompt {i} sample {g}")
            np.testing.assert_array_equal(results[i][g].logprobs, one_slot[i][g].logprobs)


@pytest.fixture(scope="module")
def shared_prompts():
    """Prompts built from 4-token pages X, Y, Z, W: some share their leading pages, and one starts
    like the first (X) and continues like another (Z after W): the cache must key a page by every
    token before it, not by its own tokens."""
    rng = np.random.RandomState(1)
    x, y, z, w = (rng.randint(0, 2990, 4) for _ in range(4))
    tail = lambda n: rng.randint(0, 2990, n)  # noqa: E731
    head = np.concatenate([x, y, z, tail(1)])
    first = np.concatenate([head, tail(6)])
    after_z = tail(5)
    return [first, np.concatenate([head, tail(9)]), np.concatenate([w, z, after_z]), np.concatenate([x, z, after_z]),
            head[:9], first.copy()]


def test_prompts_with_a_common_prefix_share_its_pages(model, sampling, shared_prompts, monkeypatch):
    lengths = max(map(len, shared_prompts))
    listed_once = []  # chunks whose prompts continue one cached page: listed once in their context table
    add_context = tooln1.rollout.engine._ChunkBuilder._add_context

    def spy(self, pages, seen):
        listed_once.extend(p for p in pages if self.columns and p in self.columns)
        return add_context(self, pages, seen)

    monkeypatch.setattr(tooln1.rollout.engine._ChunkBuilder, "_add_context", spy)
    alone = EngineConfig(num_slots=8, page_size=4, prefill_chunk=8, steps_per_round=3, prefix_cache=False,
                         grouped_decode_from=0)
    reference, _ = Engine(model, alone).generate(shared_prompts, sampling, jax.random.key(2), max_prompt_len=lengths)
    # decode attention reads shared pages once a group: a prompt's samples, and prompts whose cached
    # prefixes end on the same page (`tooln1.models.paged_attention.prefix_groups`)
    engine = Engine(model, dataclasses.replace(alone, prefix_cache=True, grouped_decode_from=1))
    assert engine.shape(sampling, 6 * G, lengths).decode_group == G
    assert Engine(model, alone).shape(sampling, 6 * G, lengths).decode_group == 0
    results, _ = engine.generate(shared_prompts, sampling, jax.random.key(2), max_prompt_len=lengths)
    # reused pages: the second prompt 3 of the first's, the third none, the fourth only X, the fifth
    # all of its own 2 (nothing to prefill), the sixth (a copy of the first) 4
    assert engine.stats["cached_tokens"] == 4 * (3 + 0 + 1 + 2 + 4)
    assert engine.stats["prefill_tokens"] == sum(len(p) - 1 for p in shared_prompts) - 40
    # prompts that continue cached pages pack into one chunk (8 tokens): every chunk but the last is full
    assert engine.stats["prefill_chunks"] == -(-engine.stats["prefill_tokens"] // 8)
    assert listed_once, "two prompts must continue one page in a chunk for the test to mean anything"
    for i in range(len(shared_prompts)):
        for g in range(G):
            np.testing.assert_array_equal(results[i][g].tokens, reference[i][g].tokens,
                                          err_msg=f"prompt {i} sample {g}")
            np.testing.assert_allclose(results[i][g].logprobs, reference[i][g].logprobs, atol=1e-4, rtol=0)


def test_cached_pages_outlive_their_holders_until_evicted_and_poisoned(model, sampling, shared_prompts, monkeypatch):
    """One slot and a pool of 2 samples' pages: a prompt's pages are held by nobody by the time a later
    prompt looks them up, and long distinct prompts make the pool evict cached pages; a freed or
    evicted page is poisoned before its next owner writes it."""
    rng = np.random.RandomState(2)
    prompts = shared_prompts[:2] + [rng.randint(0, 2990, 22) for _ in range(3)] + shared_prompts[4:]
    lengths = max(map(len, prompts))
    reference, _ = Engine(model, dataclasses.replace(ONE_SLOT, prefix_cache=False)).generate(
        prompts, sampling, jax.random.key(4), max_prompt_len=lengths)
    poisoned = poisoned_pages(monkeypatch)
    engine = Engine(model, ONE_SLOT)
    results, _ = engine.generate(prompts, sampling, jax.random.key(4), max_prompt_len=lengths)
    assert engine.stats["cached_tokens"] > 0 and engine.stats["evicted_pages"] > 0
    assert len(poisoned) > len(set(poisoned)), "pages must be reused for the test to mean anything"
    for i in range(len(prompts)):
        for g in range(G):
            np.testing.assert_array_equal(results[i][g].tokens, reference[i][g].tokens,
                                          err_msg=f"prompt {i} sample {g}")


def test_program_does_not_depend_on_the_number_of_prompts(model, prompts, sampling):
    engine = Engine(model, FIVE_SLOTS)
    key = jax.random.key(0)
    for program in ("round", "prefill"):
        few = engine.lower(sampling, 2 * G, max(LENGTHS), key, program=program).as_text()
        many = engine.lower(sampling, 5000 * G, max(LENGTHS), key, program=program).as_text()
        assert few == many, program
    # the pools are updated in place: no program's temporaries hold a copy of a pool (reading a layer's
    # context before writing it made XLA copy both pools at every layer; the prefill holds two
    # samples' context)
    shape = engine.shape(sampling, 2 * G, 4000)  # room for 4,000-token prompts: the pools dominate
    c = model.config
    pool_bytes = c.num_layers * c.num_kv_heads * shape.num_pages * shape.page_size * c.head_dim * 4
    temp = {program: engine.lower(sampling, 2 * G, 4000, key, program=program).compile().memory_analysis()
            .temp_size_in_bytes for program in ("round", "prefill")}
    assert temp["round"] < pool_bytes / 4 and temp["prefill"] < pool_bytes, (temp, pool_bytes)
    # num_slots is a cap: a shard takes its share of the samples rounded up, at most that many
    assert Engine(model, EngineConfig(num_slots=32)).shape(sampling, 2 * G, 30).slots == 8
    with pytest.raises(ValueError, match="program 'decode'"):
        engine.lower(sampling, 2 * G, 30, program="decode")
    # default slots grow with the samples only up to max_slots
    auto = Engine(model, EngineConfig(max_slots=4))
    assert auto.shape(sampling, 2, 30).slots == 2
    assert [Engine(model).shape(sampling, n, 30).slots for n in (3, 8, 9, 20, 64, 500)] == [4, 8, 16, 24, 64, 64]
    assert auto.shape(sampling, 9, 30) == auto.shape(sampling, 90000, 30)
    # running two and five prompts compiles one program per decode width at most, and one prefill, each
    # once: the first call's fresh state is placed like the state later calls pass (an uncommitted first
    # state compiled each program a second time); a page-table width no other test uses
    width = max(LENGTHS) + 11
    compiles = []

    def listener(event, secs, fun_name="", **kw):
        if "backend_compile" in event and fun_name in ("jit(run_round)", "jit(run_prefill)"):
            compiles.append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        n = compiled_programs()
        engine.generate(prompts[:2], sampling, key, max_prompt_len=width)
        engine.generate(prompts, sampling, key, max_prompt_len=width)
        widths = engine.widths(engine.shape(sampling, 2 * G, width))
        assert widths == [5, 4, 2, 1] and compiled_programs() - n <= len(widths) + 1
        engine.generate(prompts[::-1], sampling, jax.random.key(1), max_prompt_len=width)
        assert compiled_programs() - n <= len(widths) + 1
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles.count("jit(run_prefill)") == 1 and 1 <= compiles.count("jit(run_round)") <= len(widths), compiles


@pytest.mark.parametrize("shared", [True, False])
def test_a_chunk_lists_a_page_its_prompts_continue_once(shared):
    """Two prompts continuing one cached prefix in a chunk: with `Shape.shared_context` its pages are listed
    once, their slots' id the set of both segments (negative, bits 0 and 1), a page of the second's own
    listed for it alone; without, each prompt lists its context (ids 1 and 2)."""
    from tooln1.rollout.engine import _ChunkBuilder, _Prompt
    from tooln1.rollout.programs import Shape

    shape = Shape(shards=1, slots=2, pages_per_seq=4, num_pages=16, page_size=4, chunk=8, chunk_block=8,
                  chunk_attention="blockwise", steps=1, greedy=True, top_k=0, use_top_p=False, eos_ids=(),
                  chunk_sequences=3, shared_context=shared)
    chunk = _ChunkBuilder(shape)
    first = _Prompt(0, 0, np.arange(12), pages=[5, 6, 7], prefilled=8)  # pages 5, 6 cached
    second = _Prompt(1, 1, np.arange(15), pages=[5, 6, 9, 10], prefilled=10)  # 5, 6 shared; 9 half written
    assert chunk.add(first) and chunk.add(second)
    if shared:
        assert chunk.ctx_table[:chunk.ctx_pages].tolist() == [5, 6, 9]
        assert chunk.ctx_seg[:12].tolist() == [-3] * 8 + [-2, -2, 0, 0]
    else:
        assert chunk.ctx_table[:chunk.ctx_pages].tolist() == [5, 6, 5, 6, 9]
        assert chunk.ctx_seg[:20].tolist() == [1] * 8 + [2] * 10 + [0, 0]
    assert chunk.seg.tolist() == [0, 0, 0, 1, 1, 1, 1, -1]
