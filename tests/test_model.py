"""The decoder against transformers' PyTorch implementation, and its decoding layouts against itself."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import tooln1
from tooln1.checkpoints.tiny import make_tiny_checkpoint
from tooln1.models.decoder import Block, swiglu
from tooln1.platform.decode_layout import split_layers


def _batch(vocab: int, seed: int = 0):
    """A left-padded batch: rows with 4, 1 and 0 pad tokens."""
    ids = np.random.RandomState(seed).randint(0, vocab, (3, 11))
    mask = np.ones_like(ids)
    mask[0, :4] = 0
    mask[1, :1] = 0
    return ids, mask, np.maximum(mask.cumsum(-1) - 1, 0)


def _hf_logits(path, ids, mask, pos):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos))
    return out.logits.numpy()


@pytest.mark.parametrize(
    "arch,tied", [("qwen2", True), ("qwen2", False), ("llama", False)], ids=["qwen2-tied", "qwen2-untied", "llama"]
)
def test_logits_match_transformers(tmp_path, arch, tied):
    path = make_tiny_checkpoint(str(tmp_path), arch=arch, tied=tied, init_std=0.1, nonzero_biases=arch == "qwen2",
                                random_norms=True, seed=3)
    model = tooln1.load_model(path)
    assert model.config.qkv_bias == (arch == "qwen2") and model.config.tie_word_embeddings == tied
    ids, mask, pos = _batch(model.config.vocab_size)
    ours = np.asarray(model(ids, attention_mask=mask))
    ref = _hf_logits(path, ids, mask, pos)
    real = mask.astype(bool)
    assert np.abs(ours - ref)[real].max() <= 1e-5
    # The biases matter: zeroing them must move the logits, or the test could not catch their loss.
    if arch == "qwen2":
        model.layers.attention.q_bias[...] = 0 * model.layers.attention.q_bias[...]
        assert np.abs(np.asarray(model(ids, attention_mask=mask)) - ref)[real].max() > 1e-3


def test_llama3_rope_scaling_matches_transformers(tmp_path):
    """Llama-3.1's llama3 RoPE frequency scaling, at positions beyond the original context."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="llama3", rope_theta=5e5, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=32))
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    model = tooln1.load_model(str(tmp_path))
    assert model.config.rope_llama3_scaling == (8.0, 1.0, 4.0, 32)
    ids = np.random.RandomState(1).randint(0, 64, (1, 100))
    mask = np.ones_like(ids)
    ref = _hf_logits(str(tmp_path), ids, mask, np.arange(100)[None])
    assert np.abs(np.asarray(model(ids, mask)) - ref).max() <= 1e-5


def test_swiglu_gradient_equals_autodiff():
    """The MLP's `swiglu` keeps only its inputs for the backward; its gradients are autodiff's."""
    rng = np.random.RandomState(0)
    gate, up, weight = (jnp.asarray(rng.randn(7, 33).astype(np.float32) * 3) for _ in range(3))
    ours = jax.grad(lambda g, u: jnp.sum(swiglu(g, u) * weight), argnums=(0, 1))(gate, up)
    plain = jax.grad(lambda g, u: jnp.sum(jax.nn.silu(g) * u * weight), argnums=(0, 1))(gate, up)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(swiglu(gate, up)), np.asarray(jax.nn.silu(gate) * up))


def test_layers_split_for_decoding_give_the_same_logits(tiny_checkpoint):
    """`split_layers` (one block per layer, run unrolled) computes the same model."""
    model = tooln1.load_model(tiny_checkpoint)
    ids, mask, pos = _batch(model.config.vocab_size, seed=2)
    split = split_layers(nnx.merge(*nnx.split(model)))
    assert len(split.layers) == model.config.num_layers
    np.testing.assert_array_equal(split.layers[1].mlp.up_kernel[...], model.layers.mlp.up_kernel[...][1])
    np.testing.assert_allclose(np.asarray(split(ids, mask, pos)), np.asarray(model(ids, mask, pos)), atol=1e-5, rtol=0)
    assert isinstance(model.layers, Block)  # the original is left stacked


def test_bf16_compute_close_to_fp32(tiny_checkpoint):
    """bf16 activations over fp32 params: the error against fp32 is of the size transformers' own
    bf16 compute (CPU autocast) makes, within bf16 precision, and changes no greedy token."""
    fp32 = tooln1.load_model(tiny_checkpoint)
    bf16 = tooln1.load_model(tiny_checkpoint, dtype="float32", compute_dtype="bfloat16")
    ids, mask, pos = _batch(fp32.config.vocab_size)
    a, b = np.asarray(fp32(ids, mask)), np.asarray(bf16(ids, mask))
    assert b.dtype == np.float32
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        h = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
               position_ids=torch.tensor(pos)).logits.float().numpy()
    real = mask.astype(bool)
    ours, theirs = np.abs(a - b)[real].max(), np.abs(a - h)[real].max()
    assert 0 < ours <= 2 * theirs and ours <= 2**-6 * np.abs(a)[real].max()
    assert (a.argmax(-1) == b.argmax(-1))[real].all()


def _product_dtypes(model, ids, mask) -> set[str]:
    """Result dtypes of the forward's weight matmuls: unbatched dot_generals (attention's are batched),
    less the head's [.., V] logits (float32 by design)."""
    text = jax.jit(lambda ids, mask: model(ids, mask)).lower(ids, mask).as_text()
    out = set()
    for line in text.splitlines():
        found = re.search(r"stablehlo\.dot_general .*-> tensor<([0-9x]+)x(bf16|f32)>", line)
        if found and "batching_dims" not in line and not found[1].endswith(f"x{model.config.vocab_size}"):
            out.add(found[2])
    return out


def test_16_bit_matmul_products_are_float32_on_cpu_only(tiny_checkpoint, monkeypatch):
    """XLA:CPU runs bf16 x bf16 -> f32 on its bf16 units and bf16 -> bf16 on a slow path, so CPU
    programs ask for float32 products; TPU and GPU programs keep bf16 ones (7B update memory)."""
    from tooln1.platform import matmul

    bf16 = tooln1.load_model(tiny_checkpoint, dtype="float32", compute_dtype="bfloat16")
    ids, mask, _ = _batch(bf16.config.vocab_size)
    assert _product_dtypes(bf16, ids, mask) == {"f32"}
    monkeypatch.setattr(matmul, "platform", lambda mesh: "tpu")  # a model built for a TPU
    tpu = tooln1.load_model(tiny_checkpoint, dtype="float32", compute_dtype="bfloat16")
    assert _product_dtypes(tpu, ids, mask) == {"bf16"}


def test_remat_gives_same_logits_and_gradients(tiny_checkpoint):
    import jax

    plain = tooln1.load_model(tiny_checkpoint)
    remat = tooln1.load_model(tiny_checkpoint, remat=True)
    ids, mask, _ = _batch(plain.config.vocab_size)

    def loss(m):
        return (m(ids, mask) * mask[..., None]).mean()

    g1, g2 = nnx.grad(loss)(plain), nnx.grad(loss)(remat)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def test_sampling_a_remat_model(tiny_checkpoint):
    """Paper configs train with remat on; the same model must also sample (decoding skips remat)."""
    from tooln1.rollout.sampling import SamplingConfig, sample

    ids = np.random.RandomState(2).randint(0, 200, (2, 7))
    config = SamplingConfig(max_new_tokens=4, temperature=0.0)
    plain = sample(tooln1.load_model(tiny_checkpoint), ids, None, config, 0)
    remat = sample(tooln1.load_model(tiny_checkpoint, remat=True), ids, None, config, 0)
    np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(remat.tokens))
