"""The einsum a model's weight matmuls run on each platform.

XLA:CPU runs a 16-bit product on the CPU's bf16 units (AMX, AVX512-BF16) only when it is asked for a
float32 result; a 16-bit result takes a slow path. So on a CPU a 16-bit model's matmuls produce
float32 and cast back. TPUs and GPUs keep 16-bit products, whose float32 versions cost memory a large
update does not have. The choice is made once, when the model is built (`einsum_for`), and its
modules call what it returns.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from tooln1.sharding import platform

Einsum = Callable[[str, jax.Array, jax.Array], jax.Array]


def float32_products(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """``jnp.einsum`` computed as a float32 product of its 16-bit operands, cast back to their dtype."""
    return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32).astype(jnp.result_type(x, w))


def einsum_for(dtype, mesh: Mesh | None) -> Einsum:
    """The einsum for weight matmuls in compute ``dtype`` on ``mesh``'s platform (None: the default
    device's): `float32_products` for 16-bit ones on a CPU, else ``jnp.einsum``."""
    if jnp.dtype(dtype).itemsize == 2 and platform(mesh) == "cpu":
        return float32_products
    return jnp.einsum


__all__ = ["Einsum", "einsum_for", "float32_products"]
