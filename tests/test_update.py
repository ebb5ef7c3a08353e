"""The jitted update machinery on a tiny decoder.

Compiles are the cost on CI, so one module-scoped run of the updater (2 mini-batches × 2
micro-batches, AdamW with clipping) is checked against an independent composition: direct
whole-mini-batch gradients of the loss + a numpy AdamW. The same shapes then serve the non-finite,
no-recompile, sharded and finite-difference checks.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tooln1.grpo import GRPOLoss, packed_length, response_logprobs, token_logprobs
from tooln1.models import CausalLM, ModelConfig
from tooln1.sharding import make_mesh, state_shardings
from tooln1.training.updater import OptimizerConfig, ReferencePolicy, Updater, make_optimizer

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                  num_kv_heads=2, head_dim=8)
# eps 1e-3 keeps Adam's first steps (≈ sign(g)) smooth in g, so float reordering cannot flip them.
OPT = OptimizerConfig(learning_rate=1e-2, b1=0.9, b2=0.99, eps=1e-3, weight_decay=0.1, max_grad_norm=0.5)
LOSS = GRPOLoss(clip_eps=0.2, kl_coef=0.05, temperature=0.7, logprob_chunk_size=4)
N, P, R, MINI, MICRO = 32, 4, 6, 2, 8


def make_batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    prompt_mask = np.ones((N, P), np.int32)
    prompt_mask[::3, :2] = 0  # left padding
    lengths = rng.integers(1, R + 1, N)
    lengths[0] = R
    return dict(
        prompt_ids=rng.integers(0, CFG.vocab_size, (N, P)).astype(np.int32),
        prompt_mask=prompt_mask,
        response_ids=rng.integers(0, CFG.vocab_size, (N, R)).astype(np.int32),
        response_mask=(np.arange(R)[None] < lengths[:, None]).astype(np.int32),
        advantages=rng.normal(size=N).astype(np.float32),
    )


def to_np(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def split_rows(batch, i, parts):
    n = len(next(iter(batch.values())))
    return {k: v[i * n // parts : (i + 1) * n // parts] for k, v in batch.items()}


def numpy_adamw(params, grads_fn, batches, cfg: OptimizerConfig):
    """AdamW + global-norm clipping written out, one step per batch."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    mu = jax.tree.map(np.zeros_like, p)
    nu = jax.tree.map(np.zeros_like, p)
    norms = []
    for t, b in enumerate(batches, 1):
        g = jax.tree.map(lambda x: np.asarray(x, np.float64), grads_fn(jax.tree.map(np.float32, p), b))
        norm = np.sqrt(sum((x**2).sum() for x in jax.tree.leaves(g)))
        norms.append(norm)
        g = jax.tree.map(lambda x, norm=norm: x * min(1.0, cfg.max_grad_norm / norm), g)
        mu = jax.tree.map(lambda m, x: cfg.b1 * m + (1 - cfg.b1) * x, mu, g)
        nu = jax.tree.map(lambda v, x: cfg.b2 * v + (1 - cfg.b2) * x * x, nu, g)
        step = lambda x, m, v, t=t: x - cfg.learning_rate * (  # noqa: E731
            (m / (1 - cfg.b1**t)) / (np.sqrt(v / (1 - cfg.b2**t)) + cfg.eps) + cfg.weight_decay * x
        )
        p = jax.tree.map(step, p, mu, nu)
    return p, norms


@pytest.fixture(scope="module")
def run():
    """One model, one updater, one step; everything later tests compare against."""
    model = CausalLM(CFG, rngs=nnx.Rngs(0))
    graphdef, _ = nnx.split(model)
    params0 = to_np(nnx.state(model, nnx.Param))
    updater = Updater(model, LOSS, OPT, num_mini_batches=MINI, micro_batch_size=MICRO)
    reference = ReferencePolicy(nnx.state(model, nnx.Param), offload_to_host=True)
    state = updater.init(model)
    batch = make_batch()
    batch["old_logprobs"] = np.asarray(updater.compute_logprobs(state.params, batch))
    ref = np.asarray(updater.compute_logprobs(reference.params(), batch))
    batch["ref_logprobs"] = ref + np.random.default_rng(1).normal(0, 0.3, ref.shape).astype(np.float32)
    donated = jax.tree.leaves(state.params)[0]
    state, metrics = updater.step(state, batch)
    return dict(model=model, graphdef=graphdef, params0=params0, params1=to_np(state.params), updater=updater,
                state=state, metrics=jax.device_get(metrics), batch=batch, donated=donated)


def direct_fns(run):
    """Loss and gradient of one whole mini-batch, straight from the loss object (no accumulation);
    jitted once per module."""
    if "direct" not in run:
        graphdef = run["graphdef"]

        def loss(params, batch):
            return LOSS(nnx.merge(graphdef, params), batch)[0]

        run["direct"] = jax.jit(loss), jax.jit(jax.grad(loss))
    return run["direct"]


def test_step_matches_direct_gradients_and_numpy_adamw(run):
    """Micro-batched accumulation = one big batch, mini-batches are sequential AdamW steps, clipping
    uses the global norm, and params/optimizer state keep their shardings."""
    _, grad = direct_fns(run)
    minis = [split_rows(run["batch"], i, MINI) for i in range(MINI)]
    want, norms = numpy_adamw(run["params0"], lambda p, b: grad(p, b), minis, OPT)
    got = run["params1"]
    for path, g in jax.tree_util.tree_leaves_with_path(got):
        w = dict(jax.tree_util.tree_leaves_with_path(want))[path]
        np.testing.assert_allclose(g, w, atol=2e-6, rtol=1e-4, err_msg=jax.tree_util.keystr(path))
    m = run["metrics"]
    np.testing.assert_allclose(m["grad_norm"], np.mean(norms), rtol=1e-4)
    np.testing.assert_allclose(m["grad_norm_max"], np.max(norms), rtol=1e-4)
    assert max(norms) > OPT.max_grad_norm  # clipping was exercised
    assert m["skipped"] == 0 and m["num_tokens"] == run["batch"]["response_mask"].sum()
    assert 0 < m["clip_frac"] < 1 and m["kl"] > 0 and m["entropy"] > 0 and m["ratio_max"] > m["ratio_min"]
    assert m["learning_rate"] == pytest.approx(OPT.learning_rate)
    assert run["donated"].is_deleted(), "the incoming state should have been donated"


def test_skip_by_select_equals_skip_by_branch():
    """A non-finite mini-batch is skipped by a branch on a CPU and by a select elsewhere: both give the
    same params and optimizer state (here the select runs on the CPU too)."""
    batch = make_batch()
    batch["old_logprobs"] = batch["ref_logprobs"] = np.zeros(batch["response_mask"].shape, np.float32)
    batch["advantages"] = np.where(np.arange(N) == 3, np.nan, batch["advantages"]).astype(np.float32)
    results = []
    for branch in (True, False):
        model = CausalLM(CFG, rngs=nnx.Rngs(0))
        updater = Updater(model, LOSS, OPT, num_mini_batches=MINI, micro_batch_size=MICRO)
        assert updater._skip_by_branch  # the CPU default
        updater._skip_by_branch = branch
        state, metrics = updater.step(updater.init(model), batch)
        assert float(metrics["skipped"]) == 1.0
        results.append(to_np(state))
    jax.tree.map(np.testing.assert_array_equal, *results)


def test_update_lowers_loss_and_skips_non_finite_without_recompiling(run):
    loss, _ = direct_fns(run)
    batch = run["batch"]
    before = sum(float(loss(run["params0"], split_rows(batch, i, MINI))) for i in range(MINI))
    after = sum(float(loss(run["params1"], split_rows(batch, i, MINI))) for i in range(MINI))
    assert after < before - 1e-3

    compiles = []
    listener = lambda event, secs, **kw: compiles.append(event) if "backend_compile" in event else None  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        updater = run["updater"]
        state, metrics = updater.step(run["state"], batch)  # same shapes: no recompile
        kept = to_np(state.params)
        bad = dict(batch, advantages=np.where(np.arange(N) == 3, np.nan, batch["advantages"]).astype(np.float32))
        state, metrics = updater.step(state, bad)
        assert float(metrics["skipped"]) == 1.0  # the mini-batch holding row 3; the other one applies
        half = to_np(state.params)
        assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(half)))
        bad_all = dict(batch, old_logprobs=np.full_like(batch["old_logprobs"], np.nan))
        state, metrics = updater.step(state, bad_all)
        assert float(metrics["skipped"]) == MINI
        jax.tree.map(np.testing.assert_array_equal, to_np(state.params), half)
        run["state"] = state
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []


def test_compute_logprobs_matches_unchunked_model(run):
    """Micro-batched, chunked log-probs = log_softmax(logits / T) of the full model forward."""
    graphdef = run["graphdef"]
    b = run["batch"]
    ids = np.concatenate([b["prompt_ids"], b["response_ids"]], 1)
    mask = np.concatenate([b["prompt_mask"], b["response_mask"]], 1)

    @jax.jit
    def full(params, ids, mask, targets):
        logits = nnx.merge(graphdef, params)(ids, attention_mask=mask)[:, P - 1 : P + R - 1]
        return token_logprobs(logits, targets, LOSS.temperature)

    want = np.asarray(full(run["params0"], ids, mask, b["response_ids"]))
    np.testing.assert_allclose(b["old_logprobs"], want, atol=2e-5)


def test_sharded_update_equals_single_device(run):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets 8 host CPU devices)")
    mesh = make_mesh({"data": 2, "fsdp": 4})
    model = CausalLM(CFG, rngs=nnx.Rngs(0), mesh=mesh)
    shardings = state_shardings(nnx.state(model, nnx.Param), mesh)
    nnx.update(model, jax.device_put(run["params0"], shardings))
    updater = Updater(model, LOSS, OPT, num_mini_batches=MINI, micro_batch_size=MICRO)
    state = updater.init(model)
    assert updater.mesh is mesh
    mu = state.opt_state[1][0].mu  # chain(clip, adamw(scale_by_adam, ...)): Adam's first moment
    spec = lambda t: [x.sharding.spec for x in jax.tree.leaves(t)]  # noqa: E731
    assert spec(mu) == spec(state.params) and any(s != jax.sharding.PartitionSpec() for s in spec(mu))
    state, metrics = updater.step(state, run["batch"])
    assert spec(state.params) == [s.spec for s in jax.tree.leaves(shardings)]
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=2e-6, rtol=1e-4), to_np(state.params),
                 run["params1"])
    for key in ("loss", "grad_norm", "kl", "entropy", "clip_frac"):
        np.testing.assert_allclose(float(metrics[key]), float(run["metrics"][key]), rtol=1e-5, atol=1e-7)


def test_gradient_matches_finite_differences(run):
    """d loss / d params through the whole model, along a random direction, by central differences."""
    loss, grad = direct_fns(run)
    b = split_rows(run["batch"], 0, MINI)
    b = dict(b, old_logprobs=b["old_logprobs"] + 0.5 * np.sign(b["advantages"])[:, None])  # ratios away from 1
    p0 = run["params0"]
    rng = np.random.default_rng(0)
    direction = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), p0)
    g = grad(p0, b)
    analytic = sum(float((np.asarray(a) * d).sum()) for a, d in zip(jax.tree.leaves(g), jax.tree.leaves(direction)))
    h = 3e-4  # weights are ~0.02: larger steps leave the linear regime
    shifted = lambda s: jax.tree.map(lambda x, d: x + s * h * d, p0, direction)  # noqa: E731
    numeric = (float(loss(shifted(1.0), b)) - float(loss(shifted(-1.0), b))) / (2 * h)
    assert analytic == pytest.approx(numeric, rel=5e-3, abs=1e-4)


def test_on_policy_single_step_equals_recomputed_old_logprobs(run):
    """One mini-batch, one micro-batch (the loop-free path) and ``on_policy`` (old log-probs taken
    from the same forward) give the step that recomputed old log-probs give: numpy AdamW agrees."""
    model = nnx.merge(run["graphdef"], jax.tree.map(jnp.asarray, run["params0"]))
    updater = Updater(model, dataclasses.replace(LOSS, on_policy=True), OPT)
    state = updater.init(model)
    state, metrics = updater.step(state, {k: v for k, v in run["batch"].items() if k != "old_logprobs"})
    _, grad = direct_fns(run)  # LOSS with the recomputed old log-probs of params0 in the batch
    want, norms = numpy_adamw(run["params0"], grad, [run["batch"]], OPT)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=2e-6, rtol=1e-4), to_np(state.params), want)
    np.testing.assert_allclose(metrics["grad_norm"], norms[0], rtol=1e-4)
    assert float(metrics["ratio_max"]) == float(metrics["ratio_min"]) == 1.0 and float(metrics["clip_frac"]) == 0.0
    with pytest.raises(ValueError, match="on_policy=True.*num_mini_batches=2"):
        Updater(model, dataclasses.replace(LOSS, on_policy=True), OPT, num_mini_batches=2)


def test_shared_prompt_packing_matches_per_row_scoring(run):
    """``rows_per_prompt=G`` runs each group's prompt once (packed row, segment mask): log-probs,
    entropies and the loss gradient equal the per-row forward, with ragged left-padded prompts and
    responses that end early."""
    g = 4
    graphdef = run["graphdef"]
    b = make_batch(1)
    for key in ("prompt_ids", "prompt_mask"):  # the sampler's layout: a group's rows share its prompt
        b[key] = np.repeat(b[key][::g], g, axis=0)
    assert b["prompt_mask"][::g].min() == 0  # some prompts are left-padded
    model = nnx.merge(graphdef, jax.tree.map(jnp.asarray, run["params0"]))
    args = [jnp.asarray(b[k]) for k in ("prompt_ids", "prompt_mask", "response_ids", "response_mask")]
    per_row = response_logprobs(model, *args, 0.7, return_entropy=True)
    valid = b["response_mask"] > 0
    extents = [int(np.flatnonzero(m).max()) + 1 for m in b["response_mask"]]
    tight = max(sum(extents[i:i + g]) for i in range(0, len(extents), g))  # a group's responses back to back
    r = b["response_ids"].shape[1]
    assert tight == 21 < g * r
    # the bucket: lo·2^k or 1.5·lo·2^k, at most G·R
    assert [packed_length(b["response_mask"], g, lo) for lo in (1, 7, 11)] == [24, 21, 22]
    assert packed_length(b["response_mask"][:, :3], g) == 12
    for attention, length in (("dense", 0), ("blockwise", 0), ("dense", tight), ("blockwise", tight)):
        model.config = CFG.replace(attention=attention, attention_block_size=4)  # blockwise: several key blocks
        packed = response_logprobs(model, *args, 0.7, return_entropy=True, rows_per_prompt=g, packed_length=length)
        for want, got in zip(per_row, packed):
            np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=2e-5)
    b["old_logprobs"] = np.asarray(per_row[0]) + 0.3 * np.sign(b["advantages"])[:, None]  # ratios away from 1
    b["ref_logprobs"] = np.asarray(per_row[0]) - 0.2

    def loss(params, group_size, length=0):
        packed = dataclasses.replace(LOSS, rows_per_prompt=group_size, packed_length=length)
        return packed(nnx.merge(graphdef, params), b)[0]

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=(1, 2))
    want_loss, want_grad = grad(run["params0"], 1)
    for length in (0, tight):
        got_loss, got_grad = grad(run["params0"], g, length)
        assert float(got_loss) == pytest.approx(float(want_loss), abs=1e-6)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-4), got_grad, want_grad)
    # the per-batch variant reaches the compiled step and log-prob programs (the trainer's path)
    updater = Updater(model, dataclasses.replace(LOSS, rows_per_prompt=g), OPT, donate=False)
    variant = dataclasses.replace(updater.loss_fn, packed_length=tight, kl_coef=0.5)
    want = variant(nnx.merge(graphdef, run["params0"]), b)[0]
    state = updater.init(nnx.merge(graphdef, jax.tree.map(jnp.asarray, run["params0"])))
    assert float(updater.step(state, b, variant)[1]["loss"]) == pytest.approx(float(want), abs=1e-6)
    assert float(updater.step(state, b)[1]["loss"]) == pytest.approx(float(want_loss), abs=1e-6) != float(want)
    np.testing.assert_allclose(np.asarray(updater.compute_logprobs(state.params, b, loss_fn=variant))[valid],
                               np.asarray(per_row[0])[valid], atol=2e-5)
    updater = Updater(model, dataclasses.replace(LOSS, rows_per_prompt=3), OPT, micro_batch_size=8)
    with pytest.raises(ValueError, match="8 rows is not a whole number of groups of GRPOLoss.rows_per_prompt=3"):
        updater.check_batch(b)


def test_batch_validation_messages(run):
    updater = run["updater"]
    batch = run["batch"]
    with pytest.raises(KeyError, match="missing \\['ref_logprobs'\\]"):
        updater.step(run["state"], {k: v for k, v in batch.items() if k != "ref_logprobs"})
    with pytest.raises(ValueError, match="num_mini_batches=2"):
        updater.step(run["state"], {k: v[:31] for k, v in batch.items()})
    with pytest.raises(ValueError, match="micro_batch_size=8"):
        updater.step(run["state"], {k: v[:20] for k, v in batch.items()})
    with pytest.raises(ValueError, match="same leading size"):
        updater.step(run["state"], dict(batch, advantages=batch["advantages"][:16]))
    with pytest.raises(ValueError, match="unknown loss_agg"):
        GRPOLoss(loss_agg="mean")
    with pytest.raises(ValueError, match="learning_rate must be >= 0"):
        OptimizerConfig(learning_rate=-1.0)
    assert isinstance(make_optimizer(OptimizerConfig(max_grad_norm=None)), optax.GradientTransformation)


def test_reference_policy_is_a_frozen_copy():
    params = {"w": jnp.arange(4.0)}
    for offload in (False, True):
        ref = ReferencePolicy(params, offload_to_host=offload)
        out = ref.params()
        np.testing.assert_array_equal(out["w"], np.arange(4.0))
        assert out["w"].sharding.memory_kind == params["w"].sharding.memory_kind
        assert out["w"] is not params["w"]


def test_reference_in_the_compute_dtype_scores_like_the_fp32_params():
    model = CausalLM(CFG.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    ref = ReferencePolicy(params, dtype="bfloat16").params()
    assert {x.dtype for x in jax.tree.leaves(ref)} == {jnp.dtype("bfloat16")}
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 64, (2, 6)))
    mask = jnp.ones_like(ids)
    want = response_logprobs(model, ids[:, :3], mask[:, :3], ids[:, 3:], mask[:, 3:])
    got = response_logprobs(nnx.merge(graphdef, ref), ids[:, :3], mask[:, :3], ids[:, 3:], mask[:, 3:])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_remat_switch_does_not_touch_the_callers_model():
    model = CausalLM(CFG, rngs=nnx.Rngs(0))
    updater = Updater(model, LOSS, OPT, remat=True)
    state = updater.init(model)
    assert updater.model(state).config.remat is True and model.config.remat is False
    assert jax.tree.leaves(state.params)[0] is jax.tree.leaves(nnx.state(model, nnx.Param))[0]


def test_micro_token_mean_loss_is_verl_02s_micro_batch_average(run):
    """``loss_agg="micro-token-mean"`` through the updater (4 micro-batches of 8 rows, unequal token
    counts): the reported loss is the mean of the micro-batches' token-means (numpy), not the global
    token-mean. On-policy with KL 0 the per-token loss is exactly −A (ρ = 1)."""
    model = nnx.merge(run["graphdef"], jax.tree.map(jnp.asarray, run["params0"]))
    loss = dataclasses.replace(LOSS, loss_agg="micro-token-mean", on_policy=True, kl_coef=0.0)
    updater = Updater(model, loss, OptimizerConfig(learning_rate=0.0), micro_batch_size=8)
    batch = {k: v for k, v in run["batch"].items() if k not in ("old_logprobs", "ref_logprobs")}
    _, metrics = updater.step(updater.init(model), batch)
    per_token = -batch["advantages"][:, None] * batch["response_mask"]
    tokens = batch["response_mask"].astype(np.float64)
    micro = [per_token[i:i + 8].sum() / tokens[i:i + 8].sum() for i in range(0, N, 8)]
    np.testing.assert_allclose(float(metrics["loss"]), np.mean(micro), rtol=1e-5)
    assert abs(np.mean(micro) - per_token.sum() / tokens.sum()) > 1e-3


@pytest.mark.parametrize("scan_layers", [True, False])
def test_frozen_layers_train_only_the_blocks_above(scan_layers):
    """``frozen_layers=2`` of 3: the same logits, the top block's gradient unchanged, no gradient below,
    and an AdamW step with weight decay leaves the embedding and the two lowest blocks bit-identical."""
    full = CausalLM(CFG.replace(num_layers=3, scan_layers=scan_layers), rngs=nnx.Rngs(0))
    frozen = CausalLM(full.config.replace(frozen_layers=2), rngs=nnx.Rngs(0))
    batch = {k: v[:MICRO] for k, v in make_batch().items()}
    ids = np.concatenate([batch["prompt_ids"], batch["response_ids"]], 1)
    np.testing.assert_array_equal(np.asarray(frozen(ids)), np.asarray(full(ids)))

    on_policy = dataclasses.replace(LOSS, kl_coef=0.0, on_policy=True)

    def on_policy_grad(m):
        loss = lambda p: on_policy(nnx.merge(nnx.graphdef(m), p, nnx.state(m, nnx.Not(nnx.Param))), batch)[0]
        return to_np(jax.grad(loss)(nnx.state(m, nnx.Param)))

    grads = {name: on_policy_grad(m) for name, m in (("full", full), ("frozen", frozen))}
    g_full, g_frozen = grads["full"], grads["frozen"]
    assert not np.any(g_frozen["embed"]) and np.any(g_full["embed"])
    for path, g in jax.tree_util.tree_leaves_with_path(g_frozen["layers"]):
        w = dict(jax.tree_util.tree_leaves_with_path(g_full["layers"]))[path]
        assert not np.any(g[:2]) and np.any(w[:2]), jax.tree_util.keystr(path)
        np.testing.assert_allclose(g[2], w[2], rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))
    np.testing.assert_allclose(g_frozen["final_norm"]["weight"], g_full["final_norm"]["weight"], rtol=1e-5)

    updater = Updater(frozen, on_policy, OPT)
    before = to_np(nnx.state(frozen, nnx.Param))
    state, _ = updater.step(updater.init(frozen), batch)
    after = to_np(state.params)
    np.testing.assert_array_equal(after["embed"], before["embed"])
    for path, a in jax.tree_util.tree_leaves_with_path(after["layers"]):
        b = dict(jax.tree_util.tree_leaves_with_path(before["layers"]))[path]
        np.testing.assert_array_equal(a[:2], b[:2], err_msg=jax.tree_util.keystr(path))
        assert np.any(a[2] != b[2]), jax.tree_util.keystr(path)


def test_remat_with_frozen_layers_scores_and_steps_as_without():
    """The old-log-prob pass and two optimizer steps of a remat model with frozen blocks (SmolLM2's
    config shape) give what the same model gives without remat."""
    results = []
    for remat in (False, True):
        model = CausalLM(CFG.replace(num_layers=3, frozen_layers=1, remat=remat), rngs=nnx.Rngs(0))
        updater = Updater(model, LOSS, OPT, num_mini_batches=2)
        state = updater.init(model)
        batch = make_batch()
        batch["old_logprobs"] = np.asarray(updater.compute_logprobs(state.params, batch))
        batch["ref_logprobs"] = batch["old_logprobs"]
        state, metrics = updater.step(state, batch)
        results.append((batch["old_logprobs"], to_np(state.params), float(metrics["loss"])))
    (lp, params, loss), (lp_remat, params_remat, loss_remat) = results
    np.testing.assert_allclose(lp_remat, lp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss_remat, loss, rtol=1e-5, atol=1e-7)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params_remat), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_update_batch_trims_to_the_longest_response_and_packs_groups():
    """The trainer's update batch: responses cut to the longest one's power-of-two bucket, and the
    packed length is the longest group's total in its bucket (0 without packing)."""
    from tooln1.rollout.sampling import SampleOutput
    from tooln1.training.batch import update_batch

    g, r = 2, 64
    lengths = np.array([3, 20, 17, 1])  # groups of 23 and 18 tokens; the longest response 20
    mask = (np.arange(r)[None] < lengths[:, None]).astype(np.int32)
    tokens = np.arange(4 * r, dtype=np.int32).reshape(4, r)
    logprobs = -np.arange(4 * r, dtype=np.float32).reshape(4, r)
    out = SampleOutput(tokens=tokens, logprobs=logprobs, mask=mask,
                       prompt_ids=np.ones((4, 5), np.int32), prompt_mask=np.ones((4, 5), np.int32))
    host, packed = update_batch(out, np.array([1, -1, 0.5, -0.5]), g)
    assert host["response_ids"].shape == (4, 32) and packed == 24  # buckets 16, 32 / 16, 24
    np.testing.assert_array_equal(host["response_ids"], tokens[:, :32])
    np.testing.assert_array_equal(host["sample_logprobs"], logprobs[:, :32])  # the sampler's, for sampler_gap
    np.testing.assert_array_equal(host["response_mask"].sum(-1), lengths)
    assert host["advantages"].dtype == np.float32
    assert update_batch(out, np.zeros(4), 1)[1] == 0
    untrimmed, packed = update_batch(out, np.zeros(4), g, trim=False)
    assert untrimmed["response_ids"].shape == (4, r) and packed == 24
