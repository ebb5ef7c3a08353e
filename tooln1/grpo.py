"""GRPO maths (docs/design.md §8): group advantages, the clipped surrogate with a k3 KL penalty, and
per-token log-probs / entropies of sampled tokens.

Everything here is a pure function over arrays, usable inside ``jax.jit``. The optimiser machinery
that drives these losses over mini-/micro-batches lives in :mod:`tooln1.training.updater`.

Conventions: token-level arrays are ``[N, T]`` with ``N = B*G`` responses (groups contiguous: row
``b*G + g`` is sample ``g`` of prompt ``b``) and a 0/1 ``mask`` marking the response tokens that
count (1 up to and including the first EOS).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tooln1.models.decoder import default_positions

Array = jax.Array

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "micro-token-mean")

# k3 is clamped to [-10, 10]; exp(δ)-δ-1 already exceeds 10 for δ > 2.7 or δ < -11.1, so limiting δ
# to ±_K3_DELTA_LIMIT before the exp changes neither values nor gradients, but keeps exp finite
# (an inf there turns the clamp's zero cotangent into 0*inf = NaN in the backward pass).
_K3_DELTA_LIMIT = 30.0
# exp overflows float32 beyond ~88.7; the log-ratio is limited just below that so an absurd ratio
# stays finite (its value is meaningless there anyway) instead of producing NaN gradients.
_LOG_RATIO_LIMIT = 80.0


# --------------------------------------------------------------------------------------------
# advantages


def compute_advantages(rewards: Any, group_size: int, eps: float = 1e-6) -> Array:
    """Group-relative advantages ``(r - mean_g) / (std_g + eps)`` with the unbiased (ddof=1) std.

    ``rewards`` is ``[B*G]`` with groups contiguous. Equal rewards in a group give 0; a group of
    one (``group_size=1``) gives ``r / (1 + eps)`` (verl's convention: mean 0, std 1).
    """
    rewards = jnp.asarray(rewards, dtype=jnp.float32)
    if rewards.ndim != 1:
        raise ValueError(f"compute_advantages: rewards must be 1-D [B*G], got shape {rewards.shape}")
    if not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"compute_advantages: group_size must be a positive int, got {group_size!r}")
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"compute_advantages: {rewards.shape[0]} rewards are not a whole number of groups of "
            f"group_size={group_size}"
        )
    groups = rewards.reshape(-1, group_size)
    if group_size == 1:
        return groups.reshape(-1) / (1.0 + eps)
    mean = groups.mean(axis=1, keepdims=True)
    std = groups.std(axis=1, ddof=1, keepdims=True)
    # An all-equal group must give exactly 0: in float32 its mean can be off by an ulp (e.g. five
    # rewards of 0.2), which divided by std + eps ≈ 1e-6 would be a spurious advantage.
    equal = groups.max(axis=1, keepdims=True) == groups.min(axis=1, keepdims=True)
    return jnp.where(equal, 0.0, (groups - mean) / (std + eps)).reshape(-1)


# --------------------------------------------------------------------------------------------
# aggregation


def _check_agg(loss_agg: str) -> None:
    if loss_agg not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGG_MODES}")


def agg_totals(mask: Array) -> dict[str, Array]:
    """Denominators of the aggregations for a batch: response tokens and non-empty sequences.

    Micro-batched training passes the *mini-batch's* totals to every micro-batch so that the sum of
    the micro-batch losses equals the loss of the whole mini-batch (global token-mean).
    """
    mask = mask.astype(jnp.float32)
    return {
        "tokens": mask.sum(),
        "seqs": (mask.sum(axis=-1) > 0).astype(jnp.float32).sum(),
        "micro_batches": jnp.ones((), jnp.float32),  # summed over micro-batches: how many there are
    }


def aggregate_loss(
    per_token: Array,
    mask: Array,
    loss_agg: str = "token-mean",
    totals: Mapping[str, Array] | None = None,
) -> Array:
    """Reduce a per-token loss ``[N, T]`` to a scalar.

    - ``token-mean``: sum over all valid tokens / number of valid tokens (the docs/design.md default; long and
      short responses weigh per token).
    - ``seq-mean-token-mean``: mean over each sequence's tokens, then mean over sequences (gives
      short responses more weight per token: the length bias of per-sequence normalisation).
    - ``seq-mean-token-sum``: sum over each sequence's tokens, then mean over sequences.
    - ``micro-token-mean``: token-mean over *this micro-batch's* tokens, divided by the number of
      micro-batches in the mini-batch; summed by the updater, that is the mean of the micro-batch
      token-means — what verl 0.2 (the paper's code) did. It equals ``token-mean`` when all
      micro-batches hold as many tokens, and otherwise weighs tokens of short micro-batches more.

    Sequences with no valid token are ignored by the sequence means. ``totals`` (from
    :func:`agg_totals`) overrides the denominators, for micro-batch accumulation.
    """
    _check_agg(loss_agg)
    mask = mask.astype(jnp.float32)
    if totals is None:
        totals = agg_totals(mask)
    masked = jnp.where(mask > 0, per_token, 0.0)
    if loss_agg == "token-mean":
        return masked.sum() / jnp.maximum(totals["tokens"], 1.0)
    if loss_agg == "micro-token-mean":
        return masked.sum() / jnp.maximum(mask.sum(), 1.0) / jnp.maximum(totals["micro_batches"], 1.0)
    seq_sum = masked.sum(axis=-1)
    if loss_agg == "seq-mean-token-mean":
        seq_val = seq_sum / jnp.maximum(mask.sum(axis=-1), 1.0)
    else:  # seq-mean-token-sum
        seq_val = seq_sum
    return seq_val.sum() / jnp.maximum(totals["seqs"], 1.0)


def masked_mean(x: Array, mask: Array) -> Array:
    """Mean of ``x`` over ``mask`` (0 when the mask is empty)."""
    mask = mask.astype(jnp.float32)
    return jnp.where(mask > 0, x, 0.0).sum() / jnp.maximum(mask.sum(), 1.0)


def masked_max(x: Array, mask: Array) -> Array:
    """Max of ``x`` over ``mask``; ``-inf`` when the mask is empty (neutral for later maxes)."""
    return jnp.where(mask > 0, x, -jnp.inf).max()


def masked_min(x: Array, mask: Array) -> Array:
    """Min of ``x`` over ``mask``; ``+inf`` when the mask is empty (neutral for later mins)."""
    return jnp.where(mask > 0, x, jnp.inf).min()


# --------------------------------------------------------------------------------------------
# policy loss


def k3_kl(logprobs: Array, ref_logprobs: Array) -> Array:
    """Per-token "low_var_kl" (k3) estimator of KL(π‖π_ref): ``exp(δ) − δ − 1`` with
    ``δ = lp_ref − lp``, clamped to [−10, 10] as verl does. Its gradient is that of a *forward*
    KL (a known property, docs/design.md §8)."""
    delta = jnp.clip(ref_logprobs - logprobs, -_K3_DELTA_LIMIT, _K3_DELTA_LIMIT)
    return jnp.clip(jnp.exp(delta) - delta - 1.0, -10.0, 10.0)


def policy_loss(
    logprobs: Array,
    old_logprobs: Array,
    ref_logprobs: Array,
    advantages: Array,
    mask: Array,
    clip_eps: float = 0.2,
    kl_coef: float = 1e-3,
    loss_agg: str = "token-mean",
    *,
    totals: Mapping[str, Array] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """GRPO objective (docs/design.md §8): aggregate of ``ℓ + kl_coef·k3`` over the response tokens.

    ``ℓ = max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))`` with ``ρ = exp(lp − lp_old)``. ``logprobs``,
    ``old_logprobs``, ``ref_logprobs`` and ``mask`` are ``[N, T]``; ``advantages`` is ``[N]``
    (broadcast over tokens) or ``[N, T]``. Masked-out positions never contribute to values or
    gradients, whatever they hold (inf/NaN included).

    Returns ``(loss, metrics)``; metrics are token means over the valid tokens of *this* batch
    (for logging, whatever ``loss_agg``): ``pg_loss``, ``kl`` (k3 mean), ``clip_frac`` (fraction of
    tokens where the clipped branch is the active one), ``ratio_mean``/``ratio_min``/``ratio_max``,
    ``approx_kl_old`` (mean ``lp_old − lp``), ``advantage_mean`` and ``num_tokens``.
    ``totals`` overrides the aggregation denominators (see :func:`agg_totals`).
    """
    _check_agg(loss_agg)
    logprobs = jnp.asarray(logprobs)
    shape = logprobs.shape
    if logprobs.ndim != 2:
        raise ValueError(f"policy_loss: logprobs must be [N, T], got shape {shape}")
    for name, arr in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs), ("mask", mask)):
        if jnp.shape(arr) != shape:
            raise ValueError(f"policy_loss: {name} has shape {jnp.shape(arr)}, expected {shape} like logprobs")
    advantages = jnp.asarray(advantages, dtype=jnp.float32)
    if advantages.shape == shape[:1]:
        advantages = advantages[:, None]
    elif advantages.shape != shape:
        raise ValueError(
            f"policy_loss: advantages has shape {advantages.shape}, expected [N]={shape[:1]} or [N, T]={shape}"
        )
    if clip_eps < 0:
        raise ValueError(f"policy_loss: clip_eps must be >= 0, got {clip_eps}")

    valid = jnp.asarray(mask) > 0
    # Sanitise masked positions first so garbage there cannot leak NaN through where-gradients.
    lp = jnp.where(valid, logprobs.astype(jnp.float32), 0.0)
    old = jnp.where(valid, jnp.asarray(old_logprobs, jnp.float32), 0.0)
    ref = jnp.where(valid, jnp.asarray(ref_logprobs, jnp.float32), 0.0)
    adv = jnp.where(valid, advantages, 0.0)

    log_ratio = jnp.clip(lp - old, -_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
    ratio = jnp.exp(log_ratio)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    pg = jnp.maximum(pg_unclipped, pg_clipped)
    kl = k3_kl(lp, ref)
    per_token = pg + kl_coef * kl
    loss = aggregate_loss(per_token, valid, loss_agg, totals)

    sg = jax.lax.stop_gradient
    metrics = {
        "pg_loss": masked_mean(sg(pg), valid),
        "kl": masked_mean(sg(kl), valid),
        "clip_frac": masked_mean((sg(pg_clipped) > sg(pg_unclipped)).astype(jnp.float32), valid),
        "ratio_mean": masked_mean(sg(ratio), valid),
        "ratio_min": masked_min(sg(ratio), valid),
        "ratio_max": masked_max(sg(ratio), valid),
        "approx_kl_old": masked_mean(sg(old - lp), valid),
        "advantage_mean": masked_mean(sg(jnp.broadcast_to(adv, shape)), valid),
        "num_tokens": valid.astype(jnp.float32).sum(),
    }
    return loss, metrics


# --------------------------------------------------------------------------------------------
# log-probs and entropy of sampled tokens


def token_logprobs(
    logits: Array,
    targets: Array,
    temperature: float = 1.0,
    *,
    return_entropy: bool = False,
) -> Array | tuple[Array, Array]:
    """``log_softmax(logits / temperature)[..., targets]`` without materialising the full
    log-softmax: ``z[target] − logsumexp(z)`` (XLA fuses the scaling into the reductions).

    ``logits`` ``[..., V]``, ``targets`` ``[...]`` int. ``temperature <= 0`` means greedy sampling
    and uses the raw logits (the sampler's convention). With ``return_entropy`` also returns the
    per-position entropy of ``softmax(z)`` (no gradient; for logging).
    """
    z = logits.astype(jnp.float32)
    if temperature > 0 and temperature != 1.0:
        z = z / temperature
    lse = jax.nn.logsumexp(z, axis=-1)
    picked = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    lp = picked - lse
    if not return_entropy:
        return lp
    zs = jax.lax.stop_gradient(z)
    lse_s = jax.lax.stop_gradient(lse)
    probs = jnp.exp(zs - lse_s[..., None])
    entropy = lse_s - jnp.sum(probs * zs, axis=-1)
    return lp, entropy


# LM-head positions per chunk: at a 152k vocabulary, [rows, 512, V] float32 logits instead of
# [rows, 8192, V]; a sequence no longer than this runs unchunked (the quickstart's do).
LOGPROB_CHUNK_SIZE = 512


def hidden_logprobs(
    model: Any,
    hidden: Array,
    targets: Array,
    temperature: float = 1.0,
    *,
    chunk_size: int | None = None,
    return_entropy: bool = False,
) -> Array | tuple[Array, Array]:
    """Log-probs (and entropies) of ``targets`` ``[n, t]`` from final hidden states ``[n, t, D]``.

    With ``chunk_size`` the LM head runs over ``chunk_size`` positions at a time under
    ``jax.checkpoint``, so neither the forward nor the backward pass ever holds more than
    ``[n, chunk_size, V]`` logits (V is ~152k for Qwen2.5).
    """

    def one(h: Array, t: Array):
        return token_logprobs(model.logits_from_hidden(h), t, temperature, return_entropy=return_entropy)

    n, length = targets.shape
    if chunk_size is None or chunk_size >= length:
        return one(hidden, targets)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")
    pad = (-length) % chunk_size
    chunks = (length + pad) // chunk_size
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hs = hidden.reshape(n, chunks, chunk_size, hidden.shape[-1]).swapaxes(0, 1)
    ts = targets.reshape(n, chunks, chunk_size).swapaxes(0, 1)
    out = jax.lax.map(jax.checkpoint(lambda args: one(*args)), (hs, ts))

    def unchunk(x: Array) -> Array:
        return x.swapaxes(0, 1).reshape(n, chunks * chunk_size)[:, :length]

    return jax.tree.map(unchunk, out)


def response_logprobs(
    model: Any,
    prompt_ids: Array,
    prompt_mask: Array,
    response_ids: Array,
    response_mask: Array,
    temperature: float = 1.0,
    *,
    chunk_size: int | None = None,
    return_entropy: bool = False,
    rows_per_prompt: int = 1,
    packed_length: int = 0,
) -> Array | tuple[Array, Array]:
    """Per-token ``log_softmax(logits / T)`` of the sampled response tokens, ``[n, R]``.

    The model sees ``concat(prompt, response)`` (prompts left-padded, as the sampler returns them);
    the logits at position ``P − 1 + j`` score response token ``j``. Values after the first EOS are
    computed but meaningless; the loss masks them.

    ``rows_per_prompt`` G > 1 (the prompt is shared, ``grpo.share_prompt``): rows ``b*G .. b*G+G-1``
    share one prompt (the sampler's layout), so each group becomes one packed row
    ``[prompt, response_1, …, response_G]`` in which a response sees
    the prompt and itself only (`CausalLM.hidden_states`'s ``shared_prefix``): the prompt runs
    through the model once, not G times — the same values, with ``P + G·R`` instead of
    ``G·(P + R)`` tokens of work and no more attention than the unpacked rows. Each response takes
    only its own length (up to its last masked-in token), so ``packed_length`` (static; default
    ``G·R``) need only hold a group's total: with long-tail lengths the model runs over the tokens
    sampled rather than G times the longest (`packed_length` computes it from the mask). A group
    longer than ``packed_length`` loses its tokens past the end: wrong log-probs, not an error.
    """
    if prompt_ids.shape[1] < 1:
        raise ValueError("response_logprobs: prompts must have at least one position")
    n, p, r = prompt_ids.shape[0], prompt_ids.shape[1], response_ids.shape[1]
    if rows_per_prompt > 1:
        if n % rows_per_prompt:
            raise ValueError(f"response_logprobs: {n} rows are not whole groups of rows_per_prompt={rows_per_prompt}")
        return _packed_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask, temperature,
                                chunk_size, return_entropy, rows_per_prompt, packed_length or rows_per_prompt * r)
    ids = jnp.concatenate([prompt_ids, response_ids], axis=1).astype(jnp.int32)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1).astype(jnp.int32)
    hidden = model.hidden_states(ids, mask)[:, p - 1 : p + r - 1]
    return hidden_logprobs(
        model, hidden, response_ids, temperature, chunk_size=chunk_size, return_entropy=return_entropy
    )


def _extents(response_mask: Array) -> Array:
    """Each row's length up to and including its last masked-in token, ``[n]``."""
    mask = jnp.asarray(response_mask) > 0
    return jnp.max(jnp.where(mask, jnp.arange(1, mask.shape[1] + 1, dtype=jnp.int32), 0), axis=1)


def packed_length(response_mask: Any, rows_per_prompt: int, lo: int = 16) -> int:
    """Host side: the ``packed_length`` a batch needs, the longest group's total response length
    rounded up to ``lo·2^k`` or ``1.5·lo·2^k`` (at most ``G·R``): at most 50% padding, few compiles."""
    mask = np.asarray(response_mask) > 0
    n, r = mask.shape
    extents = np.where(mask.any(1), r - np.argmax(mask[:, ::-1], axis=1), 0)
    need = int(extents.reshape(n // rows_per_prompt, rows_per_prompt).sum(1).max())
    step = lo
    while step + step // 2 < need:
        step *= 2
    size = step if step >= need else step + step // 2
    return min(size, rows_per_prompt * r)


def _packed_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask, temperature, chunk_size,
                     return_entropy, g, length):
    n, p, r = prompt_ids.shape[0], prompt_ids.shape[1], response_ids.shape[1]
    b = n // g
    mask = jnp.asarray(response_mask, jnp.int32)
    t = jnp.arange(r, dtype=jnp.int32)
    extent = _extents(mask)
    offset = (jnp.cumsum(extent.reshape(b, g), axis=1) - extent.reshape(b, g)).reshape(n)
    inside = t[None] < extent[:, None]  # [n, r]
    # where each row's token t goes in its group's packed responses (length = dropped)
    dest = jnp.where(inside, offset[:, None] + t[None], length).reshape(b, g * r)

    def pack(x):  # [n, r] -> [b, length], per group (batch-aligned for sharding)
        x = jnp.asarray(x, jnp.int32).reshape(b, g * r)
        return jax.vmap(lambda d, v: jnp.zeros((length,), jnp.int32).at[d].set(v, mode="drop"))(dest, x)

    prompt_mask = jnp.asarray(prompt_mask, jnp.int32)[::g]
    prompt_len = jnp.repeat(prompt_mask.sum(-1), g)
    segments = pack(mask * (jnp.arange(n, dtype=jnp.int32) % g + 1)[:, None])
    token_index = pack(jnp.broadcast_to(t, (n, r)))
    tokens = pack(response_ids)
    ids = jnp.concatenate([jnp.asarray(prompt_ids, jnp.int32)[::g], tokens], axis=1)
    positions = jnp.concatenate([default_positions(prompt_mask), pack(prompt_len[:, None] + t[None])], axis=1)
    hidden = model.hidden_states(ids, jnp.concatenate([prompt_mask, (segments > 0).astype(jnp.int32)], axis=1),
                                 positions, shared_prefix=p, segments=segments)
    # a response's token t is scored at the prompt's last position (t = 0) or at its token t - 1
    scorer = jnp.where(token_index == 0, p - 1, p - 1 + jnp.arange(length, dtype=jnp.int32)[None])
    hidden = jnp.take_along_axis(hidden, scorer[..., None], axis=1)
    out = hidden_logprobs(model, hidden, tokens, temperature, chunk_size=chunk_size, return_entropy=return_entropy)
    back = jnp.minimum(dest, length - 1)

    def unpack(x):  # [b, length] -> [n, r], 0 past each row's extent
        rows = jnp.take_along_axis(x, back, axis=1).reshape(n, r)
        return jnp.where(inside, rows, 0.0)

    return tuple(map(unpack, out)) if return_entropy else unpack(out)


# --------------------------------------------------------------------------------------------
# the loss object the update machinery drives


GRPO_BATCH_KEYS = (
    "prompt_ids",  # [N, P] int, left-padded
    "prompt_mask",  # [N, P]
    "response_ids",  # [N, R] int
    "response_mask",  # [N, R], 1 up to and including the first EOS
    "old_logprobs",  # [N, R], recomputed by the trainer with the pre-update params
    "ref_logprobs",  # [N, R], from the frozen initial params (may be omitted when kl_coef == 0)
    "advantages",  # [N] or [N, R]
    "response_loss_mask",  # [N, R], only with GRPOLoss.loss_mask: 1 on the tokens the policy sampled
)
GRPO_OPTIONAL_KEYS = (
    "sample_logprobs",  # [N, R], the sampler's log-probs of the tokens, for the sampler_gap metrics
)


@dataclasses.dataclass(frozen=True)
class GRPOLoss:
    """GRPO objective over a batch dict with :data:`GRPO_BATCH_KEYS`, for :class:`tooln1.training.updater.Updater`.

    Hashable (static under jit). ``temperature`` is the sampling temperature (docs/design.md §8: all
    log-probs use ``logits / T``). ``logprob_chunk_size`` bounds the logits held at once.
    ``compute_entropy`` adds the policy's mean token entropy to the metrics (no gradient).

    ``on_policy``: the batch is consumed by a single optimizer step right after sampling
    (``num_mini_batches == 1``), so the old policy *is* the current one and the old log-probs are
    this forward pass's own (stop-gradient) instead of a separate recompute: same loss and gradient
    (ρ = 1), one forward pass per rollout step fewer. The batch then needs no ``old_logprobs``.

    ``rows_per_prompt`` G > 1: the batch's rows come in groups of G sharing one prompt (as the sampler
    returns them) and every forward pass scores each prompt once (see :func:`response_logprobs`);
    (micro-)batches must then hold whole groups. Pays when prompts are long next to G × responses.
    ``packed_length``: the static length of a group's packed responses (0: G × R); set it per batch
    with :func:`packed_length` so ragged groups cost their sampled tokens (Updater ``step(loss_fn=...)``).

    ``loss_mask``: the batch's responses are multi-turn trajectories, and ``response_loss_mask`` marks
    the tokens the policy sampled. Only those are trained (loss, KL, entropy, token counts); the tokens
    an environment or template inserted (observations, turn headers) stay in ``response_mask``, so later
    tokens still attend to them. Off, ``response_mask`` is both, and the batch and programs are the
    single-turn ones.

    With ``sample_logprobs`` in the batch (the sampler's log-probs of the same tokens) the metrics add
    ``sampler_gap`` and ``sampler_gap_max``, the mean and largest ``|log p_old - log p_sampler|`` over the
    trained tokens, the old policy being the weights the sampler was given: a few 1e-6 on average when
    the engine decodes them in float32; a stale engine or a lower-precision one shows as a larger gap.
    """

    clip_eps: float = 0.2
    kl_coef: float = 1e-3
    loss_agg: str = "token-mean"
    temperature: float = 1.0
    logprob_chunk_size: int | None = LOGPROB_CHUNK_SIZE
    compute_entropy: bool = True
    on_policy: bool = False
    rows_per_prompt: int = 1
    packed_length: int = 0
    loss_mask: bool = False

    def __post_init__(self):
        _check_agg(self.loss_agg)
        if self.clip_eps < 0 or self.kl_coef < 0:
            raise ValueError(f"GRPOLoss: clip_eps and kl_coef must be >= 0, got {self.clip_eps}, {self.kl_coef}")
        if not isinstance(self.rows_per_prompt, (int, np.integer)) or self.rows_per_prompt < 1:
            raise ValueError(f"GRPOLoss: rows_per_prompt must be a positive int, got {self.rows_per_prompt!r}")
        if not isinstance(self.packed_length, (int, np.integer)) or self.packed_length < 0:
            raise ValueError(f"GRPOLoss: packed_length must be an int >= 0, got {self.packed_length!r}")
        if self.logprob_chunk_size is not None and self.logprob_chunk_size < 1:
            raise ValueError(f"GRPOLoss: logprob_chunk_size must be >= 1 or None, got {self.logprob_chunk_size}")

    @property
    def required_keys(self) -> tuple[str, ...]:
        return tuple(
            k for k in GRPO_BATCH_KEYS
            if not (k == "ref_logprobs" and self.kl_coef == 0) and not (k == "old_logprobs" and self.on_policy)
            and not (k == "response_loss_mask" and not self.loss_mask)
        )

    @property
    def optional_keys(self) -> tuple[str, ...]:
        return GRPO_OPTIONAL_KEYS

    @property
    def logprob_keys(self) -> tuple[str, ...]:
        """Keys :meth:`logprobs` reads (what the trainer must have before recomputing old/ref log-probs)."""
        return GRPO_BATCH_KEYS[:4]

    def trained(self, batch: Mapping[str, Array]) -> Array:
        """The tokens the loss trains: the sampled ones of a trajectory (``loss_mask``), else every response token."""
        return batch["response_loss_mask"] if self.loss_mask else batch["response_mask"]

    def totals(self, batch: Mapping[str, Array]) -> dict[str, Array]:
        """Additive aggregation denominators of a (mini-)batch."""
        return agg_totals(self.trained(batch))

    def logprobs(self, model: Any, batch: Mapping[str, Array]) -> Array:
        """Response log-probs under ``model`` (old / reference log-probs)."""
        return response_logprobs(
            model, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"],
            self.temperature, chunk_size=self.logprob_chunk_size, rows_per_prompt=self.rows_per_prompt,
            packed_length=self.packed_length,
        )

    def __call__(
        self, model: Any, batch: Mapping[str, Array], totals: Mapping[str, Array] | None = None
    ) -> tuple[Array, dict[str, Array]]:
        out = response_logprobs(
            model, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"],
            self.temperature, chunk_size=self.logprob_chunk_size, return_entropy=self.compute_entropy,
            rows_per_prompt=self.rows_per_prompt, packed_length=self.packed_length,
        )
        lp, entropy = out if self.compute_entropy else (out, None)
        ref = batch.get("ref_logprobs")
        if ref is None:
            if self.kl_coef:
                raise KeyError("GRPOLoss: batch has no 'ref_logprobs' but kl_coef > 0")
            ref = jax.lax.stop_gradient(lp)
        old = jax.lax.stop_gradient(lp) if self.on_policy else batch["old_logprobs"]
        trained = self.trained(batch)
        loss, metrics = policy_loss(
            lp, old, ref, batch["advantages"], trained, self.clip_eps, self.kl_coef, self.loss_agg, totals=totals,
        )
        if entropy is not None:
            metrics["entropy"] = masked_mean(entropy, trained)
        if "sample_logprobs" in batch:  # a stale or numerically different sampler shows here first
            gap = jnp.abs(jax.lax.stop_gradient(old) - jnp.asarray(batch["sample_logprobs"], jnp.float32))
            metrics["sampler_gap"] = masked_mean(gap, trained)
            metrics["sampler_gap_max"] = masked_max(gap, trained)
        return loss, metrics
