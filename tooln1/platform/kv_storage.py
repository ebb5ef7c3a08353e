"""What the rollout engine's KV pages hold on each platform: 16-bit keys and values as integers on a CPU.

XLA:CPU widens a bfloat16 scatter's whole operand to float32 and back, so every KV write would pass
over every layer's pages; it scatters uint16 in place. So on a CPU a bfloat16 pool holds its values'
bits (`BFLOAT16_BITS`), written with `store` and read back with `load`, and a float16 pool is kept
as float32. Elsewhere a pool holds the compute dtype as it is.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# A pool of this dtype holds bfloat16 values as their bits.
BFLOAT16_BITS = jnp.dtype(jnp.uint16)


def pool_dtype(dtype, platform: str) -> jnp.dtype:
    """The pools' dtype for KV in compute ``dtype`` on ``platform`` ("cpu", "gpu", "tpu")."""
    dtype = jnp.dtype(dtype)
    if platform != "cpu" or dtype.itemsize == 4:
        return dtype
    return BFLOAT16_BITS if dtype == jnp.bfloat16 else jnp.dtype(jnp.float32)


def store(x: jax.Array, pool: jnp.dtype) -> jax.Array:
    """``x`` as a pool of dtype ``pool`` stores it."""
    if pool == BFLOAT16_BITS:
        return jax.lax.bitcast_convert_type(x.astype(jnp.bfloat16), BFLOAT16_BITS)
    return x.astype(pool)


def load(x: jax.Array) -> jax.Array:
    """Values read from a pool, in the dtype they were computed in."""
    return jax.lax.bitcast_convert_type(x, jnp.bfloat16) if x.dtype == BFLOAT16_BITS else x


__all__ = ["BFLOAT16_BITS", "pool_dtype", "store", "load"]
