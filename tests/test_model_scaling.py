"""What makes paper-scale lengths and depths compile: scanned layers equal unrolled ones, attention
memory grows linearly with length (backward included), and the program does not grow with depth.
Memory is read from XLA's compiled buffer assignment on the CPU backend; nothing here runs long."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tooln1.models import CausalLM, ModelConfig

TINY = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4,
                   num_kv_heads=2, head_dim=8)


def _loss(model, ids, mask, cot):
    return jnp.sum(model(ids, attention_mask=mask) * cot)


def test_scanned_layers_equal_unrolled_logits_and_gradients():
    ids = np.random.RandomState(0).randint(0, 64, (2, 10))
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    cot = jax.random.normal(jax.random.PRNGKey(1), (2, 10, 64)) * mask[..., None]
    results = []
    for scan in (True, False):
        model = CausalLM(TINY.replace(scan_layers=scan), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)
        grads = jax.grad(lambda p, g=graphdef: jnp.sum(nnx.merge(g, p)(ids, mask) * cot))(params)
        results.append((np.asarray(model(ids, mask)), grads))
    (logits_s, grads_s), (logits_u, grads_u) = results
    np.testing.assert_allclose(logits_s, logits_u, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), grads_s, grads_u)
    # the layers differ, so a scan that reused one layer's parameters would fail the check above
    q = np.asarray(nnx.state(CausalLM(TINY, rngs=nnx.Rngs(0)), nnx.Param)["layers"]["attention"]["q_kernel"][...])
    assert np.abs(q[0] - q[1]).max() > 1e-3


def _train_step_memory(config: ModelConfig, t: int) -> int:
    """Temp bytes of a forward + backward over one row of ``t`` tokens (loss on the hidden states,
    so the vocabulary projection does not enter)."""
    model = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)

    def loss(p, ids):
        return jnp.mean(nnx.merge(graphdef, p).hidden_states(ids) ** 2)

    ids = jax.ShapeDtypeStruct((1, t), jnp.int32)
    compiled = jax.jit(jax.grad(loss)).lower(params, ids).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_attention_memory_grows_linearly_with_length():
    config = TINY.replace(num_layers=1, remat=True, attention_block_size=256)
    blockwise = [_train_step_memory(config.replace(attention="blockwise"), t) for t in (1024, 4096)]
    dense = [_train_step_memory(config.replace(attention="dense"), t) for t in (1024, 4096)]
    assert blockwise[1] <= 5 * blockwise[0], blockwise
    assert dense[1] > 10 * dense[0], dense  # the check can tell quadratic from linear
    assert blockwise[1] < dense[1] / 8


def test_program_size_does_not_grow_with_depth():
    def lowered_size(layers: int) -> int:
        model = nnx.eval_shape(lambda: CausalLM(TINY.replace(num_layers=layers, remat=True), rngs=nnx.Rngs(0)))
        graphdef, params = nnx.split(model)

        def loss(p, ids):
            return jnp.mean(nnx.merge(graphdef, p)(ids))

        return len(jax.jit(jax.grad(loss)).lower(params, jax.ShapeDtypeStruct((2, 16), jnp.int32)).as_text())

    shallow, deep = lowered_size(2), lowered_size(16)
    assert deep <= 1.5 * shallow, (shallow, deep)
