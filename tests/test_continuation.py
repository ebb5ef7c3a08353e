"""Multi-turn continuation in the rollout engine: a continued sample equals a fresh prefill of its whole
context, tokens inserted by ``continue_with`` are marked and carry no log-prob, slow tools stall no other
sample, and the turn and length caps end trajectories as `Completion.stop` says."""
import collections
import dataclasses
import threading
import time

import jax
import numpy as np
import pytest

from tooln1.checkpoints.hf_import import load_model
from tooln1.checkpoints.tiny import make_tiny_checkpoint
from tooln1.rollout import engine as engine_module
from tooln1.rollout import programs
from tooln1.rollout.engine import STOPS, Engine, EngineConfig
from tooln1.rollout.programs import run_prefill
from tooln1.rollout.sampling import SamplingConfig

VOCAB = 2990
LENGTHS = [5, 13, 9]
G, R, MAX_LENGTH = 2, 8, 72
# Every test runs on this shape, so the greedy programs compile once and the sampled ones once (a round
# and two prefill widths: multi-turn rounds with at most 8 tokens to prefill run the narrow chunk); a
# multi-turn chunk's segments start at multiples of 4 tokens, its blockwise query blocks 4 wide; decode
# reads a prompt's pages once for its samples
CONFIG = EngineConfig(num_slots=4, page_size=4, prefill_chunk=16, steps_per_round=3, decode_widths=1,
                      narrow_chunk=8, segment_align=4, grouped_decode_from=1, narrow_key_block=8)
EOS = tuple(range(0, VOCAB, 4))  # a quarter of the vocabulary ends a turn: most turns end before R


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = make_tiny_checkpoint(str(tmp_path_factory.mktemp("continuation") / "tiny"), nonzero_biases=True,
                                init_std=0.3, seed=3)
    return load_model(path, dtype="float32")


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model, CONFIG)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.RandomState(0)
    return [rng.randint(0, VOCAB, n).astype(np.int32) for n in LENGTHS]


def greedy(g: int = G) -> SamplingConfig:
    return SamplingConfig(num_samples=g, max_new_tokens=R, temperature=0.0, eos_ids=EOS)


SAMPLED = SamplingConfig(num_samples=G, max_new_tokens=R, temperature=0.9, eos_ids=EOS)


def observation(i: int, g: int, turn_tokens: np.ndarray, length: tuple[int, int] = (2, 7)) -> list[int]:
    """A tool's answer as ids: random, but a function of the sample and what it said, so samples diverge."""
    rng = np.random.RandomState([i, g, *turn_tokens.tolist()])
    return rng.randint(0, VOCAB, rng.randint(*length)).tolist()


def turns_of(c) -> list[tuple[int, int]]:
    """(start, end) of each run of sampled tokens in a completion."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], c.sampled.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


@pytest.fixture(scope="module")
def three_tool_turns(engine, prompts):
    results, _ = engine.generate(prompts, greedy(), jax.random.key(0), continue_with=observation, max_turns=4,
                                 max_length=MAX_LENGTH)
    assert 8 in engine.stats["chunk_widths"], "the test needs observations prefilled in the narrow chunk"
    return results


def test_continued_slot_equals_a_fresh_prefill_of_its_context(model, engine, prompts, three_tool_turns):
    results = three_tool_turns
    flat = [(i, g, c) for i, group in enumerate(results) for g, c in enumerate(group)]
    assert sum(len(turns_of(c)) == 4 for _, _, c in flat) >= 2, "the test needs trajectories of 4 turns"
    # the G samples of a prompt diverge after their first tool turn
    assert any(len({tuple(c.tokens) for c in group}) == G for group in results)
    # turn by turn: generate() on the whole context so far, one sample each, gives the same greedy tokens
    for turn in range(4):
        contexts, expected = [], []
        for i, _, c in flat:
            spans = turns_of(c)
            start, end = spans[turn] if turn < len(spans) else (0, 0)
            contexts.append(np.concatenate([prompts[i], c.tokens[:start]]))
            expected.append(c.tokens[start:end])
        # the multi-turn run's page-table width, so the same programs serve (max_length = this + R)
        ref, _ = engine.generate(contexts, greedy(1), jax.random.key(0), max_prompt_len=MAX_LENGTH - R)
        for (i, g, _), want, got in zip(flat, expected, ref):
            if len(want):
                np.testing.assert_array_equal(got[0].tokens, want, err_msg=f"prompt {i} sample {g} turn {turn}")
    # log-probs of the sampled tokens are a full forward's over the finished trajectory; inserted ones are 0
    seqs = [np.concatenate([prompts[i], c.tokens]) for i, _, c in flat]
    padded = np.zeros((len(seqs), MAX_LENGTH), np.int32)  # right padding: causal, so it changes nothing before
    for row, seq in zip(padded, seqs):
        row[:len(seq)] = seq
    logp = np.asarray(jax.nn.log_softmax(model(padded), axis=-1))
    for (i, g, c), row, seq in zip(flat, logp, seqs):
        p = len(prompts[i])
        full = row[np.arange(p - 1, len(seq) - 1), seq[p:]]
        # 1e-5 relative as well: summation order (chunked vs dense attention) moves a log-prob near -3 by
        # ~1e-5 on some CPUs' XLA kernels
        np.testing.assert_allclose(c.logprobs[c.sampled], full[c.sampled], atol=1e-5, rtol=1e-5,
                                   err_msg=f"prompt {i} sample {g}")
        assert not c.logprobs[~c.sampled].any()
        assert c.stop in STOPS and len(seq) <= MAX_LENGTH


def test_ragged_pool_continues_as_split_pools_do(model, prompts, three_tool_turns, monkeypatch):
    """With the TPU's ragged pool (here its pure-JAX reference) a continued sample's appended ids attend over
    its own pages in place: the same greedy trajectories as with split pools."""
    import tooln1.platform.decode_layout

    monkeypatch.setattr(tooln1.platform.decode_layout, "kv_pool", lambda config, target, cores: "ragged")
    engine = Engine(model, CONFIG)
    assert engine.layout.kv_pool == "ragged"
    results, _ = engine.generate(prompts, greedy(), jax.random.key(0), continue_with=observation, max_turns=4,
                                 max_length=MAX_LENGTH)
    for group, want in zip(results, three_tool_turns):
        for c, w in zip(group, want):
            np.testing.assert_array_equal(c.tokens, w.tokens)
            np.testing.assert_array_equal(c.sampled, w.sampled)
            np.testing.assert_allclose(c.logprobs, w.logprobs, atol=1e-5, rtol=1e-5)


def test_single_turn_unchanged_by_the_continuation_path(model, prompts):
    """A continue_with that ends every trajectory gives what no continue_with gives, bit for bit (with the
    same chunk programs: a narrower one changes the float rounding of the pages it writes)."""
    engine = Engine(model, dataclasses.replace(CONFIG, narrow_chunk=0, segment_align=0))
    plain, _ = engine.generate(prompts, SAMPLED, jax.random.key(3), max_prompt_len=MAX_LENGTH - R)
    ended, _ = engine.generate(prompts, SAMPLED, jax.random.key(3), continue_with=lambda i, g, t: None,
                               max_turns=4, max_length=MAX_LENGTH)
    for a, b in zip((c for group in plain for c in group), (c for group in ended for c in group)):
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(a.logprobs, b.logprobs)
        assert a.sampled.all() and b.sampled.all() and a.stop == b.stop
    assert {c.stop for group in plain for c in group} == {"eos", "max_new_tokens"}


def test_aligned_segments_sample_what_packed_segments_sample(model, prompts, three_tool_turns, monkeypatch):
    """A multi-turn chunk's segments start at multiples of `EngineConfig.segment_align` (4 here), so a
    4-wide query block holds one continuation; the trajectories are those of packed chunks."""
    starts = []  # each segment's first index in its chunk

    def spy(**kw):
        for row in np.asarray(kw["chunk"].seg):
            starts.extend(np.flatnonzero((row >= 0) & (row != np.concatenate([[-1], row[:-1]]))).tolist())
        assert kw["shape"].segment_align == 4
        return run_prefill(**kw)

    monkeypatch.setattr(engine_module, "run_prefill", spy)
    aligned_engine = Engine(model, CONFIG)
    aligned, _ = aligned_engine.generate(prompts, greedy(), jax.random.key(0), continue_with=observation, max_turns=4,
                                         max_length=MAX_LENGTH)
    assert starts and all(i % 4 == 0 for i in starts) and any(i > 0 for i in starts), starts
    monkeypatch.setattr(engine_module, "run_prefill", run_prefill)
    packed_engine = Engine(model, dataclasses.replace(CONFIG, segment_align=0))
    assert packed_engine.shape(greedy(), 6, 13, MAX_LENGTH).segment_align == 0
    assert Engine(model, CONFIG).shape(greedy(), 6, 13).segment_align == 0  # single-turn chunks stay packed
    packed, _ = packed_engine.generate(prompts, greedy(), jax.random.key(0), continue_with=observation, max_turns=4,
                                       max_length=MAX_LENGTH)
    # the gaps that align segments are not counted as prefilled tokens
    assert aligned_engine.stats["prefill_tokens"] == packed_engine.stats["prefill_tokens"]
    for field in ("segment_align", "grouped_decode_from"):
        with pytest.raises(ValueError, match=f"EngineConfig.{field} must be >= 0, got -1"):
            EngineConfig(**{field: -1})
    with pytest.raises(ValueError, match="EngineConfig.narrow_key_block must be >= 1, got 0"):
        EngineConfig(narrow_key_block=0)
    # narrow programs (observations) take narrow_key_block's key blocks, full-width ones prefill_block's
    shape = packed_engine.shape(greedy(), 6, 13, MAX_LENGTH)
    assert programs._key_block(shape._replace(chunk=8)) == CONFIG.narrow_key_block
    assert programs._key_block(shape._replace(chunk=512)) == CONFIG.prefill_block
    for i, (a_group, b_group) in enumerate(zip(aligned, packed)):
        for g, (a, b) in enumerate(zip(a_group, b_group)):
            np.testing.assert_array_equal(a.tokens, b.tokens, err_msg=f"prompt {i} sample {g}")
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


def test_a_chunk_runs_the_narrowest_width_that_holds_it(model, prompts, three_tool_turns, monkeypatch):
    """With chunk widths 4, 8 and 16, every prefill runs the narrowest program that holds its tokens, and the
    trajectories are those of widths 8 and 16 (greedy tokens equal, log-probs up to float rounding)."""
    engine = Engine(model, dataclasses.replace(CONFIG, narrow_chunk=4, segment_align=0))
    assert engine.chunk_widths(engine.shape(greedy(), 6, 13, MAX_LENGTH), multi_turn=True) == [4, 8, 16]
    assert Engine(model, dataclasses.replace(CONFIG, narrow_chunk=3)).chunk_widths(
        engine.shape(greedy(), 6, 13, MAX_LENGTH), multi_turn=True) == [3, 6, 12, 16]
    assert engine.chunk_widths(engine.shape(greedy(), 6, 13), multi_turn=False) == [16]
    ran = []  # (program width, extent of its fullest shard: its last real token + 1)

    def spy(**kw):
        seg = np.asarray(kw["chunk"].seg)
        ran.append((kw["shape"].chunk, max(int(np.flatnonzero(row >= 0).max(initial=-1)) + 1 for row in seg)))
        return run_prefill(**kw)

    monkeypatch.setattr(engine_module, "run_prefill", spy)
    results, _ = engine.generate(prompts, greedy(), jax.random.key(0), continue_with=observation, max_turns=4,
                                 max_length=MAX_LENGTH)
    for width, tokens in ran:
        assert width == min(w for w in (4, 8, 16) if w >= tokens), (width, tokens)
    assert {width for width, _ in ran} == {4, 8, 16}, ran
    assert {w: n for w, (n, _) in engine.stats["chunk_widths"].items()} == dict(collections.Counter(w for w, _ in ran))
    for i, (a_group, b_group) in enumerate(zip(three_tool_turns, results)):
        for g, (a, b) in enumerate(zip(a_group, b_group)):
            np.testing.assert_array_equal(a.tokens, b.tokens, err_msg=f"prompt {i} sample {g}")
            np.testing.assert_array_equal(a.sampled, b.sampled)
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
            assert a.stop == b.stop


def test_slow_and_ragged_tools_stall_no_other_sample(engine, prompts):
    slow = {(0, 0): 0.6, (1, 1): 0.2}  # seconds each call of these samples takes
    ends = []  # (prompt, time) as groups finish
    returned = {}  # last time each slow sample's tool returned
    lock = threading.Lock()

    def tool(delay: bool):
        def continue_with(i, g, turn_tokens):
            if i == 2 and len(turn_tokens) % 2:
                return None  # ragged: this prompt's samples end after a turn of odd length
            if delay and (i, g) in slow:
                time.sleep(slow[i, g])
                with lock:
                    returned[i, g] = time.perf_counter()
            return observation(i, g, turn_tokens)
        return continue_with

    fast, _ = engine.generate(prompts, SAMPLED, jax.random.key(7), continue_with=tool(False), max_turns=4,
                              max_length=MAX_LENGTH)
    waited, _ = engine.generate(prompts, SAMPLED, jax.random.key(7), continue_with=tool(True), max_turns=4,
                                max_length=MAX_LENGTH, on_group=lambda i, group: ends.append((i, time.perf_counter())))
    assert engine.stats["continuations"] >= 4
    for i, (a_group, b_group) in enumerate(zip(fast, waited)):
        for g, (a, b) in enumerate(zip(a_group, b_group)):
            np.testing.assert_array_equal(a.tokens, b.tokens, err_msg=f"prompt {i} sample {g}")
            np.testing.assert_array_equal(a.sampled, b.sampled)
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
            assert a.stop == b.stop
    assert len(turns_of(waited[0][0])) >= 2, "the slowest sample must have waited on a tool"
    # prompt 2 finished while the slow samples' tools were still running
    done = dict(ends)
    assert done[2] < returned[0, 0] and [i for i, _ in ends][-1] == 0


def test_caps_end_trajectories(engine, prompts):
    calls = []

    def long_observations(i, g, turn_tokens):
        calls.append((i, g))
        return observation(i, g, turn_tokens, length=(10, 20))

    two, _ = engine.generate(prompts, greedy(), jax.random.key(0), continue_with=long_observations, max_turns=2,
                             max_length=MAX_LENGTH)
    for i, group in enumerate(two):
        for g, c in enumerate(group):
            assert len(turns_of(c)) <= 2 and calls.count((i, g)) == len(turns_of(c)) - 1
            if c.stop == "max_turns":
                assert len(turns_of(c)) == 2 and c.tokens[-1] in EOS
            if c.stop == "max_new_tokens":
                start, end = turns_of(c)[-1]
                assert end - start == R and c.tokens[-1] not in EOS
    assert "max_turns" in {c.stop for group in two for c in group}

    calls.clear()
    capped, _ = engine.generate(prompts, greedy(), jax.random.key(0), continue_with=long_observations, max_turns=50,
                                max_length=MAX_LENGTH)
    stops = [c.stop for group in capped for c in group]
    assert "max_length" in stops and "max_turns" not in stops
    for i, group in enumerate(capped):
        for c in group:
            assert len(prompts[i]) + len(c.tokens) <= MAX_LENGTH
            if c.stop == "max_length":
                # the cap cut a turn short, or the last observation was dropped (the trajectory ends sampled)
                assert c.sampled[-1]
                assert len(prompts[i]) + len(c.tokens) == MAX_LENGTH or c.tokens[-1] in EOS


def test_bad_continuations_name_the_culprit(engine, prompts):
    with pytest.raises(ValueError, match="max_turns"):
        engine.generate(prompts, greedy(), jax.random.key(0), continue_with=observation)
    with pytest.raises(ValueError, match="max_length 13 leaves no room"):
        engine.generate(prompts, greedy(), jax.random.key(0), continue_with=observation, max_turns=2, max_length=13)
    with pytest.raises(ValueError, match=r"continue_with\(prompt \d, sample \d\) returned \[-1\]"):
        engine.generate(prompts, greedy(), jax.random.key(0), continue_with=lambda i, g, t: [-1], max_turns=2,
                        max_length=MAX_LENGTH)

    def broken(i, g, t):
        raise KeyError("no such tool")

    with pytest.raises(RuntimeError, match=r"continue_with\(prompt \d, sample \d\) raised KeyError"):
        engine.generate(prompts, greedy(), jax.random.key(0), continue_with=broken, max_turns=2,
                        max_length=MAX_LENGTH)
