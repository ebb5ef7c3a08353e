"""SFT loss: masked next-token cross-entropy on assistant tokens only, and its use by the updater.

A stub LM (embedding prefix-mean + linear head) stands in for the decoder: it has the two methods
the loss needs (``hidden_states``, ``logits_from_hidden``) and compiles in a fraction of the time.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tooln1.training.sft_loss import SFTLoss, sft_loss
from tooln1.training.updater import OptimizerConfig, Updater

V, D, N, T = 16, 8, 4, 7


class StubLM(nnx.Module):
    """Position t's hidden state is the mean of the embeddings of tokens 0..t (causal)."""

    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Param(jax.random.normal(rngs.params(), (V, D)))
        self.head = nnx.Param(jax.random.normal(rngs.params(), (D, V)))

    def hidden_states(self, input_ids, attention_mask=None):
        x = self.embed[...][input_ids]
        return jnp.cumsum(x, axis=1) / jnp.arange(1, input_ids.shape[1] + 1)[None, :, None]

    def logits_from_hidden(self, hidden):
        return hidden @ self.head[...]


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (N, T)).astype(np.int32)
    attn = np.ones((N, T), np.int32)
    attn[1, :2] = 0  # left padding
    loss_mask = np.zeros((N, T), np.int32)
    loss_mask[0, 3:6] = 1  # assistant span followed by a non-assistant token
    loss_mask[1, 0:5] = 1  # covers padding, which must not count
    loss_mask[2, 4:] = 1
    return dict(input_ids=ids, attention_mask=attn, loss_mask=loss_mask)


def numpy_nll(model, batch):
    emb, head = np.asarray(model.embed[...], np.float64), np.asarray(model.head[...], np.float64)
    ids, attn, lm = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    total, count = 0.0, 0
    for i in range(N):
        for t in range(1, T):  # token t, predicted from tokens 0..t-1
            if lm[i, t] and attn[i, t]:
                logits = emb[ids[i, :t]].mean(0) @ head
                logp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
                total -= logp[ids[i, t]]
                count += 1
    return total / count, count


LOSS_FN = jax.jit(lambda model, batch: sft_loss(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"]))


def test_sft_loss_matches_numpy_on_assistant_tokens_only():
    model = StubLM(nnx.Rngs(0))
    batch = make_batch()
    loss, metrics = LOSS_FN(model, batch)
    want, count = numpy_nll(model, batch)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(metrics["num_tokens"]) == count == 3 + 3 + 3  # row 1: positions 0 (no prefix) and 1 (pad) dropped
    # Tokens outside the loss mask do not count: changing the non-assistant token after row 0's span
    # (nothing later is learned from it) and every token of row 3 leaves the loss unchanged.
    changed = {k: v.copy() for k, v in batch.items()}
    changed["input_ids"][0, 6] = (changed["input_ids"][0, 6] + 1) % V
    changed["input_ids"][3] = (changed["input_ids"][3] + 5) % V
    np.testing.assert_allclose(float(LOSS_FN(model, changed)[0]), float(loss), rtol=1e-6)
    # ... while changing an assistant token does change it.
    changed["input_ids"][0, 4] = (changed["input_ids"][0, 4] + 1) % V
    assert abs(float(LOSS_FN(model, changed)[0]) - float(loss)) > 1e-4


def test_sft_gradient_only_flows_from_assistant_positions():
    model = StubLM(nnx.Rngs(1))
    batch = make_batch()
    hidden = jax.jit(model.hidden_states)(jnp.asarray(batch["input_ids"]))

    class FixedHidden:
        logits_from_hidden = model.logits_from_hidden

        def __init__(self, h):
            self.h = h

        def hidden_states(self, ids, mask=None):
            return self.h

    g = jax.jit(jax.grad(
        lambda h: sft_loss(FixedHidden(h), batch["input_ids"], batch["attention_mask"], batch["loss_mask"])[0]
    ))(hidden)
    counts = np.zeros((N, T), bool)
    counts[:, :-1] = (batch["loss_mask"][:, 1:] > 0) & (batch["attention_mask"][:, 1:] > 0)
    norms = np.abs(np.asarray(g)).sum(-1)
    assert np.all(norms[~counts] == 0) and np.all(norms[counts] > 0)


def test_sft_updater_step_micro_batched_lowers_loss():
    """One SGD step through the updater (2 micro-batches) equals a step on the direct gradient."""
    model = StubLM(nnx.Rngs(2))
    batch = make_batch()
    graphdef, params0 = nnx.split(model)
    direct = jax.jit(jax.grad(lambda p: SFTLoss()(nnx.merge(graphdef, p), batch)[0]))(params0)
    want = jax.tree.map(lambda p, g: np.asarray(p - 0.5 * g), params0, direct)
    before = float(LOSS_FN(model, batch)[0])
    updater = Updater(model, SFTLoss(), optax.sgd(0.5), micro_batch_size=2)
    state, metrics = updater.step(updater.init(jax.tree.map(jnp.copy, params0)), batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6), state.params, want)
    np.testing.assert_allclose(float(metrics["loss"]), before, rtol=1e-5)
    assert float(LOSS_FN(updater.model(state), batch)[0]) < before
    assert float(metrics["nll"]) == pytest.approx(before, rel=1e-5) and float(metrics["num_tokens"]) == 9

    adamw = Updater(model, SFTLoss(loss_agg="seq-mean-token-mean"), OptimizerConfig(learning_rate=0.05))
    state, metrics = adamw.step(adamw.init(jax.tree.map(jnp.copy, params0)), batch)
    assert float(metrics["skipped"]) == 0
    assert float(LOSS_FN(adamw.model(state), batch)[0]) < before


def test_sft_bad_arguments():
    model = StubLM(nnx.Rngs(0))
    with pytest.raises(ValueError, match="must all be \\[N, T\\]"):
        sft_loss(model, np.zeros((2, 3), np.int32), np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="unknown loss_agg"):
        SFTLoss(loss_agg="token-sum")
