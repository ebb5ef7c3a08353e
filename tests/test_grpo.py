"""GRPO maths against an independent numpy transcription of docs/design.md §8."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tooln1.grpo import (
    LOSS_AGG_MODES,
    agg_totals,
    aggregate_loss,
    compute_advantages,
    policy_loss,
    token_logprobs,
)

# Jitted once per signature: eager op-by-op dispatch compiles every primitive and is slower on CI.
PL = jax.jit(policy_loss, static_argnames=("clip_eps", "kl_coef", "loss_agg"))
ADV = jax.jit(compute_advantages, static_argnames=("group_size", "eps"))

# ----------------------------------------------------------------------------- numpy reference


def ref_advantages(rewards, group_size, eps=1e-6):
    out = []
    for start in range(0, len(rewards), group_size):
        g = [float(r) for r in rewards[start : start + group_size]]
        if len(g) == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(g) / len(g)
            std = math.sqrt(sum((x - mean) ** 2 for x in g) / (len(g) - 1))
        out += [(x - mean) / (std + eps) for x in g]
    return np.array(out)


def ref_per_token(lp, old, ref, adv, clip_eps, kl_coef):
    ratio = np.exp(lp - old)
    l1 = -adv * ratio
    l2 = -adv * np.clip(ratio, 1 - clip_eps, 1 + clip_eps)
    pg = np.maximum(l1, l2)
    delta = ref - lp
    k = np.clip(np.exp(delta) - delta - 1, -10, 10)
    return pg + kl_coef * k, pg, k, l2 > l1, ratio


def ref_loss(lp, old, ref, adv, mask, clip_eps=0.2, kl_coef=1e-3, agg="token-mean"):
    lp, old, ref, mask = (np.asarray(x, np.float64) for x in (lp, old, ref, mask))
    adv = np.asarray(adv, np.float64)
    if adv.ndim == 1:
        adv = adv[:, None] * np.ones_like(lp)
    m = mask > 0
    lp, old, ref, adv = (np.where(m, x, 0.0) for x in (lp, old, ref, adv))  # masked: whatever they hold
    with np.errstate(over="ignore"):
        per_tok, pg, k, clipped, ratio = ref_per_token(lp, old, ref, adv, clip_eps, kl_coef)
    if agg in ("token-mean", "micro-token-mean"):  # one batch is one micro-batch
        loss = (per_tok * mask).sum() / mask.sum()
    else:
        vals = []
        for i in range(lp.shape[0]):
            n = mask[i].sum()
            if n == 0:
                continue
            s = (per_tok[i] * mask[i]).sum()
            vals.append(s / n if agg == "seq-mean-token-mean" else s)
        loss = sum(vals) / len(vals)
    metrics = {
        "pg_loss": pg[m].mean(),
        "kl": k[m].mean(),
        "clip_frac": clipped[m].mean(),
        "ratio_mean": ratio[m].mean(),
        "ratio_min": ratio[m].min(),
        "ratio_max": ratio[m].max(),
        "approx_kl_old": (old - lp)[m].mean(),
        "num_tokens": m.sum(),
    }
    return loss, metrics


def random_batch(seed, n=12, t=9, group_size=4):
    rng = np.random.default_rng(seed)
    lp = -rng.gamma(1.0, 2.0, size=(n, t))
    old = lp + rng.normal(0, 1.0, size=(n, t))  # ratios far from 1 (e^±2 and beyond)
    ref = lp + rng.normal(0, 6.0, size=(n, t))  # k3 regularly beyond the ±10 clamp
    rewards = rng.integers(0, 2, size=n).astype(np.float32)
    rewards[:group_size] = 1.0  # one all-equal group
    adv = ref_advantages(rewards, group_size)
    lengths = rng.integers(0, t + 1, size=n)
    lengths[1] = 0  # an empty response row
    lengths[2] = t  # a truncated (full) one
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
    # garbage where masked: must not leak into values or gradients
    lp = np.where(mask > 0, lp, -1e30)
    old = np.where(mask > 0, old, np.nan)
    return [x.astype(np.float32) for x in (lp, old, ref)] + [adv.astype(np.float32), mask]


# ----------------------------------------------------------------------------- advantages


def test_advantages_documented_examples():
    adv = np.asarray(ADV(np.array([1, 0, 0, 0, 0, 1, 1, 0, 0, 0]), group_size=5))
    np.testing.assert_allclose(adv[:5], [1.7889, -0.4472, -0.4472, -0.4472, -0.4472], atol=1e-4)
    np.testing.assert_allclose(adv[5:], [1.0954, 1.0954, -0.7303, -0.7303, -0.7303], atol=1e-4)


def test_advantages_equal_group_and_group_of_one():
    adv = ADV(jnp.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.2, 0.2, 0.2]), group_size=3)
    np.testing.assert_array_equal(np.asarray(adv), 0.0)
    single = ADV(jnp.array([1.0, 0.0, 0.5]), group_size=1)
    np.testing.assert_allclose(np.asarray(single), np.array([1.0, 0.0, 0.5]) / (1 + 1e-6), rtol=1e-7)


@pytest.mark.parametrize("group_size", [1, 2, 5])
def test_advantages_match_reference(group_size):
    rng = np.random.default_rng(group_size)
    rewards = rng.normal(size=group_size * 7).astype(np.float32)
    rewards[:group_size] = 0.3  # all equal but not exactly representable: still exactly 0
    got = np.asarray(ADV(rewards, group_size=group_size))
    np.testing.assert_allclose(got, ref_advantages(rewards, group_size), rtol=1e-5, atol=1e-5)


def test_advantages_jit_and_errors():
    np.testing.assert_allclose(ADV(jnp.array([1.0, 0.0]), group_size=2), [0.7071061, -0.7071061], rtol=1e-5)
    with pytest.raises(ValueError, match="whole number of groups"):
        compute_advantages(np.zeros(7), group_size=5)
    with pytest.raises(ValueError, match="1-D"):
        compute_advantages(np.zeros((2, 5)), group_size=5)
    with pytest.raises(ValueError, match="group_size"):
        compute_advantages(np.zeros(4), group_size=0)


# ----------------------------------------------------------------------------- policy loss


@pytest.mark.parametrize("agg", LOSS_AGG_MODES)
@pytest.mark.parametrize("seed", [0, 1])
def test_policy_loss_matches_reference(agg, seed):
    lp, old, ref, adv, mask = random_batch(seed)
    loss, metrics = PL(lp, old, ref, adv, mask, clip_eps=0.2, kl_coef=0.05, loss_agg=agg)
    want, want_m = ref_loss(lp, old, ref, adv, mask, 0.2, 0.05, agg)
    np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=1e-6)
    for key, val in want_m.items():
        np.testing.assert_allclose(float(metrics[key]), val, rtol=2e-5, atol=1e-6, err_msg=key)
    assert 0 < float(metrics["clip_frac"]) < 1


def test_policy_loss_token_level_advantages_and_defaults():
    lp, old, ref, adv, mask = random_batch(3)
    adv_tok = np.broadcast_to(adv[:, None], lp.shape) * np.linspace(0.5, 1.5, lp.shape[1])[None, :]
    loss, _ = PL(lp, old, ref, adv_tok, mask)
    want, _ = ref_loss(lp, old, ref, adv_tok, mask, 0.2, 1e-3, "token-mean")
    np.testing.assert_allclose(float(loss), want, rtol=2e-5)


def test_policy_loss_gradient_matches_analytic():
    """d loss / d lp: −A·ρ where the unclipped branch is active or ρ within [1−ε, 1+ε]; plus the k3
    derivative 1 − exp(δ) unless clamped; zero on masked tokens."""
    lp, old, ref, adv, mask = random_batch(4)
    eps, beta = 0.2, 0.1
    g = np.asarray(jax.jit(jax.grad(lambda x: policy_loss(x, old, ref, adv, mask, eps, beta)[0]))(jnp.asarray(lp)))
    lp64, old64, ref64 = (np.where(mask > 0, x, 0.0).astype(np.float64) for x in (lp, old, ref))
    a = adv[:, None].astype(np.float64)
    ratio = np.exp(lp64 - old64)
    l1, l2 = -a * ratio, -a * np.clip(ratio, 1 - eps, 1 + eps)
    in_range = (ratio >= 1 - eps) & (ratio <= 1 + eps)
    d_pg = np.where((l1 >= l2) | in_range, -a * ratio, 0.0)
    delta = ref64 - lp64
    k = np.exp(delta) - delta - 1
    d_k = np.where(k <= 10, 1 - np.exp(delta), 0.0)
    want = np.where(mask > 0, d_pg + beta * d_k, 0.0) / mask.sum()
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-7)


def test_totals_make_micro_batches_sum_to_the_whole():
    lp, old, ref, adv, mask = random_batch(5)
    totals = agg_totals(jnp.asarray(mask))
    part_loss = jax.jit(
        lambda b, agg: policy_loss(*b, loss_agg=agg, totals=totals)[0], static_argnums=1
    )
    for agg in set(LOSS_AGG_MODES) - {"micro-token-mean"}:  # that one is defined per micro-batch (below)
        whole = part_loss((lp, old, ref, adv, mask), agg)
        parts = [part_loss(tuple(x[s] for x in (lp, old, ref, adv, mask)), agg) for s in (slice(0, 6), slice(6, 12))]
        np.testing.assert_allclose(float(sum(parts)), float(whole), rtol=1e-5, err_msg=agg)


def test_micro_token_mean_is_the_mean_of_micro_batch_token_means():
    """verl 0.2's aggregation: each micro-batch's token-mean, averaged over the micro-batches (numpy
    reference), given the mini-batch's summed totals as the updater passes them."""
    rng = np.random.default_rng(9)
    per_token = rng.normal(size=(12, 7)).astype(np.float32)
    mask = (np.arange(7)[None] < rng.integers(1, 8, 12)[:, None]).astype(np.float32)
    parts = (slice(0, 4), slice(4, 8), slice(8, 12))
    totals = jax.tree.map(lambda *t: sum(t), *(agg_totals(jnp.asarray(mask[s])) for s in parts))
    assert float(totals["micro_batches"]) == 3.0
    got = sum(float(aggregate_loss(per_token[s], mask[s], "micro-token-mean", totals)) for s in parts)
    want = np.mean([(per_token[s] * mask[s]).sum() / mask[s].sum() for s in parts])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    global_mean = (per_token * mask).sum() / mask.sum()
    assert abs(want - global_mean) > 1e-3  # unequal micro-batch token counts: not the global token-mean
    np.testing.assert_allclose(float(aggregate_loss(per_token, mask, "micro-token-mean")), global_mean, rtol=1e-6)


def test_policy_loss_extreme_values_stay_finite():
    lp = jnp.array([[-200.0, -0.1, -3.0]])
    old = jnp.array([[-0.1, -150.0, -3.0]])
    ref = jnp.array([[-0.1, -0.1, -300.0]])
    mask = jnp.ones((1, 3))
    f = jax.jit(jax.value_and_grad(lambda x, a: policy_loss(x, old, ref, a, mask)[0]))
    for a in (1.0, -1.0):
        loss, grads = f(lp, jnp.array([a]))
        assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grads)))


def test_policy_loss_bad_arguments():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="unknown loss_agg"):
        policy_loss(x, x, x, jnp.zeros(2), x, loss_agg="sum")
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(x, x, x, jnp.zeros(3), x)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(x, x, jnp.zeros((2, 4)), jnp.zeros(2), x)


# ----------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_token_logprobs_and_entropy(temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(2, 5, 11)).astype(np.float32)
    targets = rng.integers(0, 11, size=(2, 5))
    f = jax.jit(token_logprobs, static_argnames=("temperature", "return_entropy"))
    lp, ent = f(jnp.asarray(logits), jnp.asarray(targets), temperature, return_entropy=True)
    z = logits.astype(np.float64) / (temperature if temperature > 0 else 1.0)
    logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    want = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(lp), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), -(np.exp(logp) * logp).sum(-1), rtol=1e-5, atol=1e-5)
