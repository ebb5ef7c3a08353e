"""GRPO over multi-turn trajectories: only the tokens the policy sampled are trained, while the tokens an
environment inserted stay in the context; checked against a reference that never sees a mask."""
from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tooln1.grpo import LOSS_AGG_MODES, GRPOLoss, packed_length, policy_loss
from tooln1.models import CausalLM, ModelConfig
from tooln1.training.batch import update_batch
from tooln1.training.updater import OptimizerConfig, Updater

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                  num_kv_heads=2, head_dim=8)
LOSS = GRPOLoss(clip_eps=0.2, kl_coef=0.05, temperature=0.7, logprob_chunk_size=4, loss_mask=True)
G, P = 2, 4
# s: sampled by the policy, i: inserted (an observation, a turn header), .: padding; groups of G rows
LAYOUT = ("sssiiiss....",
          "ssss........",
          "ssiiiisssiis",
          "siis........")
CELLS = np.array([list(row) for row in LAYOUT])
MODEL = CausalLM(CFG, rngs=nnx.Rngs(0))
GRAPHDEF, PARAMS = nnx.split(MODEL)


def trajectories(seed: int = 0) -> dict[str, np.ndarray]:
    """The hand-built batch: ragged, left-padded prompts shared by each group, per-token advantages,
    old and reference log-probs near the policy's (ratios on both sides of the clip)."""
    rng = np.random.default_rng(seed)
    n, r = CELLS.shape
    prompt_mask = np.ones((n, P), np.int32)
    prompt_mask[G:, :1] = 0
    batch = dict(
        prompt_ids=np.repeat(rng.integers(0, CFG.vocab_size, (n // G, P)), G, axis=0).astype(np.int32),
        prompt_mask=prompt_mask,
        response_ids=rng.integers(0, CFG.vocab_size, (n, r)).astype(np.int32),
        response_mask=(CELLS != ".").astype(np.int32),
        response_loss_mask=(CELLS == "s").astype(np.int32),
        advantages=rng.normal(size=(n, r)).astype(np.float32),
    )
    lp = np.asarray(forward_logprobs(PARAMS, batch))
    batch["old_logprobs"] = (lp + rng.normal(0, 0.3, lp.shape)).astype(np.float32)
    batch["ref_logprobs"] = (lp + rng.normal(0, 0.5, lp.shape)).astype(np.float32)
    return batch


def forward_logprobs(params, batch, entropy=False):
    """log_softmax(logits / T) of every response token from one plain forward over prompt ++ response."""
    ids = jnp.concatenate([batch["prompt_ids"], batch["response_ids"]], axis=1)
    mask = jnp.concatenate([batch["prompt_mask"], batch["response_mask"]], axis=1)
    r = batch["response_ids"].shape[1]
    z = nnx.merge(GRAPHDEF, params)(ids, mask)[:, P - 1:P - 1 + r].astype(jnp.float32) / LOSS.temperature
    logp = jax.nn.log_softmax(z)
    lp = jnp.take_along_axis(logp, jnp.asarray(batch["response_ids"])[..., None], axis=-1)[..., 0]
    return (lp, -(jnp.exp(logp) * logp).sum(-1)) if entropy else lp


SAMPLED_ROWS, SAMPLED_COLS = np.nonzero(CELLS == "s")


def reference_loss(params, batch, agg):
    """docs/design.md §8 over the list of the layout's sampled tokens alone: no mask reaches the arithmetic."""
    return reference_from_logprobs(forward_logprobs(params, batch)[SAMPLED_ROWS, SAMPLED_COLS], batch, agg)


def reference_from_logprobs(lp, batch, agg):
    """The aggregated loss from ``lp``, the log-probs of the sampled tokens, in the layout's order."""
    rows, cols = SAMPLED_ROWS, SAMPLED_COLS
    old, ref, adv = (jnp.asarray(batch[k])[rows, cols] for k in ("old_logprobs", "ref_logprobs", "advantages"))
    ratio = jnp.exp(lp - old)
    pg = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1 - LOSS.clip_eps, 1 + LOSS.clip_eps))
    delta = ref - lp
    per_token = pg + LOSS.kl_coef * jnp.clip(jnp.exp(delta) - delta - 1, -10, 10)
    if agg in ("token-mean", "micro-token-mean"):  # one batch is one micro-batch
        return per_token.mean()
    seqs = np.unique(rows)
    sums = jax.ops.segment_sum(per_token, rows, num_segments=len(LAYOUT))[seqs]
    counts = np.bincount(rows, minlength=len(LAYOUT))[seqs]
    return (sums / counts if agg == "seq-mean-token-mean" else sums).mean()


def loss_fn(loss):
    return lambda params, batch: loss(nnx.merge(GRAPHDEF, params), batch)


# compiled once for the module's tests
VALUE_AND_GRAD = jax.jit(jax.value_and_grad(loss_fn(LOSS), has_aux=True))
UNMASKED = jax.jit(loss_fn(dataclasses.replace(LOSS, loss_mask=False)))


def test_loss_and_gradient_equal_a_reference_over_the_sampled_tokens():
    """The loss and its gradient, unpacked and with each group packed behind its shared prompt, equal
    the reference computed over the sampled tokens only."""
    batch = trajectories()
    packed = dataclasses.replace(LOSS, rows_per_prompt=G, packed_length=packed_length(batch["response_mask"], G, 1))
    assert packed.packed_length == 16 < G * 12  # groups of 8 + 4 and 12 + 4 tokens (sampled or inserted)
    want, want_grad = jax.jit(jax.value_and_grad(reference_loss), static_argnums=2)(PARAMS, batch, "token-mean")
    for (got, metrics), grad in (VALUE_AND_GRAD(PARAMS, batch),
                                 jax.jit(jax.value_and_grad(loss_fn(packed), has_aux=True))(PARAMS, batch)):
        assert float(got) == pytest.approx(float(want), rel=1e-5, abs=1e-7)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), grad, want_grad)
        assert float(metrics["num_tokens"]) == batch["response_loss_mask"].sum() == 17
    assert float(want) != pytest.approx(float(UNMASKED(PARAMS, batch)[0]), rel=1e-3)  # inserted tokens trained too


def test_every_aggregation_counts_the_sampled_tokens():
    """Each aggregation's loss, packed and not, equals the reference's (token and sequence counts are
    the sampled tokens'); its gradient with respect to the log-probs is the reference's on the sampled
    tokens and exactly zero on the inserted ones."""
    batch = trajectories(1)
    losses = {(agg, g): dataclasses.replace(LOSS, loss_agg=agg, rows_per_prompt=g) for agg in LOSS_AGG_MODES
              for g in (1, G)}
    got = jax.jit(lambda params, b: {k: loss_fn(x)(params, b)[0] for k, x in losses.items()})(PARAMS, batch)
    lp = forward_logprobs(PARAMS, batch)
    sampled = batch["response_loss_mask"] > 0
    for agg in LOSS_AGG_MODES:
        want, want_grad = jax.value_and_grad(reference_from_logprobs)(lp[sampled], batch, agg)
        for g in (1, G):
            assert float(got[agg, g]) == pytest.approx(float(want), rel=1e-5, abs=1e-7), (agg, g)
        grad = jax.grad(lambda x, agg=agg: policy_loss(
            x, batch["old_logprobs"], batch["ref_logprobs"], batch["advantages"], batch["response_loss_mask"],
            LOSS.clip_eps, LOSS.kl_coef, agg)[0])(lp)
        np.testing.assert_allclose(np.asarray(grad)[sampled], want_grad, rtol=1e-5, atol=1e-8, err_msg=agg)
        assert (np.asarray(grad)[~sampled] == 0).all()


def test_inserted_tokens_contribute_nothing_but_context():
    """An inserted token's advantage, old and reference log-probs change neither the loss nor its
    gradient (garbage there included); its id changes the log-probs of the sampled tokens after it
    only. Without the loss mask the same perturbation does change the loss."""
    batch = trajectories(2)
    inserted = (batch["response_mask"] > 0) & (batch["response_loss_mask"] == 0)
    (want, metrics), want_grad = VALUE_AND_GRAD(PARAMS, batch)
    perturbed = dict(batch)
    for key, garbage in (("advantages", 1e6), ("old_logprobs", np.nan), ("ref_logprobs", -np.inf)):
        perturbed[key] = np.where(inserted, garbage, batch[key]).astype(np.float32)
    (got, _), grad = VALUE_AND_GRAD(PARAMS, perturbed)
    assert float(got) == float(want)
    jax.tree.map(np.testing.assert_array_equal, grad, want_grad)

    lp, entropy = forward_logprobs(PARAMS, batch, entropy=True)
    sampled = batch["response_loss_mask"] > 0
    assert float(metrics["entropy"]) == pytest.approx(float(entropy[sampled].mean()), rel=1e-5)
    changed = dict(batch, response_ids=batch["response_ids"].copy())
    changed["response_ids"][2, 3] = (batch["response_ids"][2, 3] + 1) % CFG.vocab_size  # an observation token
    moved = np.asarray(forward_logprobs(PARAMS, changed)) != np.asarray(lp)
    assert not moved[:2].any() and not moved[3:].any() and not moved[2, :3].any()  # other rows, the tokens before
    assert moved[2, 4:].all()  # every token after it sees it
    assert float(VALUE_AND_GRAD(PARAMS, changed)[0][0]) != pytest.approx(float(want), rel=1e-4)

    shifted = dict(batch, old_logprobs=np.where(inserted, batch["old_logprobs"] - 1, batch["old_logprobs"]))
    assert float(UNMASKED(PARAMS, shifted)[0]) != pytest.approx(float(UNMASKED(PARAMS, batch)[0]), rel=1e-3)


def test_updater_trains_the_sampled_tokens_across_micro_batches():
    """The loss-mask key reaches the compiled step, and micro-batches are normalised by the sampled
    tokens of the whole mini-batch (the groups hold 9 and 8 of them)."""
    batch = trajectories(3)
    updater = Updater(MODEL, LOSS, OptimizerConfig(), micro_batch_size=2, donate=False)
    state = updater.init(MODEL)
    metrics = updater.step(state, batch)[1]
    assert float(metrics["loss"]) == pytest.approx(float(reference_loss(PARAMS, batch, "token-mean")), rel=1e-5)
    assert float(metrics["num_tokens"]) == 17
    with pytest.raises(KeyError, match="missing \\['response_loss_mask'\\]"):
        updater.check_batch({k: v for k, v in batch.items() if k != "response_loss_mask"})


def test_update_batch_takes_the_sampled_mask_from_the_rollout():
    """``sampled`` on the rollout output becomes ``response_loss_mask`` (within the response mask,
    trimmed with it); a single-turn rollout's batch has no such key."""
    cells = np.array([list(row.ljust(40, ".")) for row in LAYOUT])
    n, r = cells.shape
    out = types.SimpleNamespace(tokens=np.arange(n * r, dtype=np.int32).reshape(n, r),
                                logprobs=-np.ones((n, r), np.float32),
                                mask=(cells != ".").astype(np.int32), sampled=(cells != "i"),
                                prompt_ids=np.ones((n, P), np.int32), prompt_mask=np.ones((n, P), np.int32))
    host, packed = update_batch(out, np.zeros(n), G)
    assert host["response_ids"].shape == (n, 16) and packed == 16  # the longest: 12, the largest group: 12 + 4
    np.testing.assert_array_equal(host["response_loss_mask"], (cells == "s")[:, :16])
    assert host["response_loss_mask"].dtype == np.int32
    single = types.SimpleNamespace(**{k: v for k, v in vars(out).items() if k != "sampled"})
    assert "response_loss_mask" not in update_batch(single, np.zeros(n), G)[0]
    with pytest.raises(ValueError, match="sampled mask has shape \\(4, 39\\), expected \\(4, 40\\)"):
        update_batch(types.SimpleNamespace(**dict(vars(out), sampled=out.sampled[:, 1:])), np.zeros(n), G)


def test_sampler_gap_is_the_old_policy_against_the_sampler_on_the_sampled_tokens():
    """``sample_logprobs`` adds the mean and largest |old - sampler| log-prob over the trained tokens
    (garbage on inserted ones ignored); without the key the metrics are not there."""
    batch = trajectories(4)
    sampled = batch["response_loss_mask"] > 0
    rng = np.random.default_rng(4)
    sample = batch["old_logprobs"] + rng.normal(0, 0.01, batch["old_logprobs"].shape).astype(np.float32)
    sample = np.where(sampled, sample, np.nan).astype(np.float32)
    metrics = VALUE_AND_GRAD(PARAMS, dict(batch, sample_logprobs=sample))[0][1]
    gap = np.abs(batch["old_logprobs"] - sample)[sampled]
    assert float(metrics["sampler_gap"]) == pytest.approx(float(gap.mean()), rel=1e-5)
    assert float(metrics["sampler_gap_max"]) == pytest.approx(float(gap.max()), rel=1e-6)
    assert "sampler_gap" not in VALUE_AND_GRAD(PARAMS, batch)[0][1]
    updater = Updater(MODEL, LOSS, OptimizerConfig(), donate=False)  # the updater passes the key on
    stepped = updater.step(updater.init(MODEL), dict(batch, sample_logprobs=sample))[1]
    assert float(stepped["sampler_gap_max"]) == pytest.approx(float(gap.max()), rel=1e-6)
