"""LoRA and QLoRA: adapters on the stacked projections, trained alone, decoded by the engine, exported.

The references: the model with fresh adapters is the base model, bit for bit; an adapted model computes
what its merged weights compute; the engine's tokens and log-probs after a refresh are those of the
merged model run directly (and not the base's); the export loads in transformers and, as a PEFT adapter,
on the transformers base.
"""
from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tooln1.checkpoints.hf_import import load_model
from tooln1.grpo import GRPOLoss, response_logprobs
from tooln1.models import CausalLM, ModelConfig
from tooln1.models.lora import LoRAParam, add_adapters, merged
from tooln1.rollout.engine import Engine, EngineConfig
from tooln1.rollout.sampling import SamplingConfig
from tooln1.training.updater import OptimizerConfig, ReferencePolicy, Updater

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8)
IDS = np.random.RandomState(0).randint(0, 64, (3, 9)).astype(np.int32)


def perturbed(model, seed: int = 1, scale: float = 0.1):
    """``model`` with every adapter weight moved by Gaussian noise, as training would move it."""
    state = nnx.state(model, LoRAParam)
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda x: x + scale * jax.random.normal(next(keys), x.shape, x.dtype), state))
    return model


def base_and_adapted(quantization: str = "none", **config):
    base = CausalLM(CFG.replace(**config), rngs=nnx.Rngs(0))
    adapted = add_adapters(CausalLM(CFG.replace(**config), rngs=nnx.Rngs(0)), rank=4, alpha=8.0,
                           quantization=quantization, seed=2)
    return base, adapted


def test_fresh_adapters_are_the_base_and_trained_ones_equal_their_merge():
    base, adapted = base_and_adapted()
    np.testing.assert_array_equal(np.asarray(adapted(IDS)), np.asarray(base(IDS)))
    perturbed(adapted)
    got, want = np.asarray(adapted(IDS)), np.asarray(merged(adapted)(IDS))
    assert np.abs(got - np.asarray(base(IDS))).max() > 1e-2  # the adapters do something
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert not hasattr(merged(adapted).layers.attention, "q_lora") and hasattr(adapted.layers.attention, "q_lora")


@pytest.mark.parametrize("bits, bound", [("int8", 5e-3), ("int4", 8e-2)])
def test_quantized_base_stays_close_and_merges_exactly(bits, bound):
    base, adapted = base_and_adapted(bits)
    assert adapted.layers.mlp.up_kernel[...].dtype == jnp.dtype(bits)
    error = np.abs(np.asarray(adapted(IDS)) - np.asarray(base(IDS))).max()
    assert 0 < error < bound, error
    perturbed(adapted)
    np.testing.assert_allclose(np.asarray(adapted(IDS)), np.asarray(merged(adapted)(IDS)), atol=1e-5, rtol=0)


def test_update_trains_only_adapters_and_the_reference_is_the_base():
    base, model = base_and_adapted()
    frozen = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param)) if "lora" not in str(k)}
    loss = GRPOLoss(kl_coef=0.1, temperature=1.0)
    updater = Updater(model, loss, OptimizerConfig(learning_rate=1e-2, weight_decay=0.1), num_mini_batches=2)
    reference = ReferencePolicy(nnx.state(model, LoRAParam))
    state = updater.init(model)
    assert {type(v) for v in jax.tree.leaves(state.params, is_leaf=lambda x: isinstance(x, nnx.Variable))} == {
        LoRAParam}
    moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x)]
    assert sum(x.size for x in moments) == 2 * sum(x.size for x in jax.tree.leaves(state.params))

    rng = np.random.default_rng(0)
    batch = dict(prompt_ids=IDS[:, :4].repeat(2, 0), prompt_mask=np.ones((6, 4), np.int32),
                 response_ids=IDS[:, 4:].repeat(2, 0), response_mask=np.ones((6, 5), np.int32),
                 advantages=rng.normal(size=6).astype(np.float32))
    ref = np.asarray(updater.compute_logprobs(reference.params(), batch))
    want = response_logprobs(base, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                             batch["response_mask"])
    # adapters off (B = 0): the base model itself, up to the rounding of two separately compiled programs
    np.testing.assert_allclose(ref, np.asarray(want), rtol=1e-6, atol=0)
    batch.update(old_logprobs=ref, ref_logprobs=ref)
    for _ in range(3):
        state, metrics = updater.step(state, batch)
    assert float(metrics["skipped"]) == 0
    policy = updater.model(state)
    after = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(policy, nnx.Param)) if "lora" not in str(k)}
    assert after.keys() == frozen.keys()
    for k in frozen:  # weight decay included: the base never moves
        np.testing.assert_array_equal(after[k], frozen[k], err_msg=str(k))
    assert np.abs(np.asarray(policy.layers.mlp.down_lora.b[...])).max() > 0


def test_engine_decodes_the_adapters_after_a_refresh(tiny_checkpoint):
    model = add_adapters(load_model(tiny_checkpoint), rank=4, alpha=16.0, seed=0)
    config = EngineConfig(num_slots=4, page_size=4, prefill_chunk=16, steps_per_round=4)
    sampling = SamplingConfig(num_samples=2, max_new_tokens=8, temperature=0.0, ignore_eos=True)
    prompts = [np.arange(5, 17, dtype=np.int32), np.arange(40, 47, dtype=np.int32)]

    def decode(engine):
        results, _ = engine.generate(prompts, sampling, jax.random.key(0))
        return [(c.tokens, c.logprobs) for group in results for c in group]

    engine = Engine(model, config)
    before = decode(engine)
    perturbed(model, scale=0.5)  # what an update does to the adapters
    engine.refresh(model)
    got, want = decode(engine), decode(Engine(merged(model), config))
    changed = False
    for (tokens, logprobs), (want_tokens, want_logprobs), (old_tokens, _) in zip(got, want, before):
        np.testing.assert_array_equal(tokens, want_tokens)
        np.testing.assert_allclose(logprobs, want_logprobs, atol=1e-5)
        changed |= not np.array_equal(tokens, old_tokens)
    assert changed, "the perturbed adapters should change the greedy tokens (else the test cannot fail)"
    # and the sampled log-probs are the merged model's, run directly over the finished trajectory (the
    # adapted model's, up to the rounding that merging changes)
    tokens, logprobs = got[0]
    full = np.concatenate([prompts[0], tokens])[None]
    for policy, atol in ((merged(model), 1e-5), (model, 1e-4)):
        direct = jax.nn.log_softmax(np.asarray(policy(full))[0, len(prompts[0]) - 1:-1], -1)
        # rtol as well: paged and dense attention sum in different orders (~1e-5 at a log-prob near -7.5)
        np.testing.assert_allclose(logprobs, direct[np.arange(len(tokens)), tokens], atol=atol, rtol=1e-5)


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, tiny_checkpoint):
    """A LoRA run (SFT 2 steps, GRPO 2 steps), and the same run killed after GRPO step 1 and resumed."""
    from test_train import make_config, run_killed_after

    from tooln1.training.loop import run_training

    base = tmp_path_factory.mktemp("lora_train")
    lora = {"model.lora.rank": 4, "model.lora.alpha": 8.0, "grpo.steps": 2, "eval.every": 0}
    full = run_training(make_config(base / "run", tiny_checkpoint, base / "jax_cache", **lora))
    resumed = make_config(base / "resumed", tiny_checkpoint, base / "jax_cache", **lora)
    killed = run_killed_after(resumed, 3)
    return {"full": full, "killed": killed, "resumed": run_training(resumed)}


def adapters_of(model):
    return {str(k): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, LoRAParam))}


def test_lora_run_resumes_bit_exactly_from_a_checkpoint_of_adapters(lora_runs):
    full, resumed = lora_runs["full"], lora_runs["resumed"]
    assert lora_runs["killed"] == "after grpo step 1"
    a, b = adapters_of(full.model), adapters_of(resumed.model)
    assert a.keys() == b.keys() and len(a) == 2 * 7
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert resumed.summary["val_after_grpo"] == full.summary["val_after_grpo"]
    # a checkpoint holds the adapters and their moments, not the base
    checkpoints = pathlib.Path(full.summary["workdir"]) / "checkpoints" / "grpo"
    saved = sum(f.stat().st_size for f in checkpoints.rglob("*") if f.is_file()) / len(list(checkpoints.iterdir()))
    base_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(full.model, nnx.Param)))
    assert saved < base_bytes / 2, (saved, base_bytes)


def test_training_run_exports_merged_weights_and_a_peft_adapter(lora_runs, tiny_checkpoint):
    import peft
    import torch
    import transformers

    model, summary = lora_runs["full"].model, lora_runs["full"].summary
    assert model.config.lora_rank == 4
    loaded = load_model(tiny_checkpoint)  # the base the run started from, untouched by training
    for name in ("q_kernel", "o_kernel"):
        np.testing.assert_array_equal(np.asarray(getattr(model.layers.attention, name)[...]),
                                      np.asarray(getattr(loaded.layers.attention, name)[...]))
    assert np.abs(np.asarray(model.layers.attention.q_lora.b[...])).max() > 0

    ids = np.random.RandomState(1).randint(3, 2990, (2, 11))
    ours = np.asarray(model(ids))
    exported = transformers.AutoModelForCausalLM.from_pretrained(summary["export_dir"], dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_allclose(exported(torch.as_tensor(ids)).logits.numpy(), ours, atol=1e-4, rtol=0)

    adapter_dir = pathlib.Path(summary["workdir"]) / "peft_adapter"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(pathlib.Path(tiny_checkpoint).resolve()) and config["r"] == 4
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    with torch.no_grad():
        base_logits = hf_base(torch.as_tensor(ids)).logits.numpy()
        with_adapter = peft.PeftModel.from_pretrained(hf_base, str(adapter_dir))(torch.as_tensor(ids)).logits.numpy()
    assert np.abs(base_logits - ours).max() > 1e-3  # the adapters changed the model: the round trip can fail
    np.testing.assert_allclose(with_adapter, ours, atol=1e-4, rtol=0)
