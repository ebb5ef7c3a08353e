"""Frozen base kernels held as int8 or int4 (QLoRA): symmetric absmax scales, one per output channel
(int8), or per output channel and group of 32 inputs (int4).

A quantized kernel keeps its name, shape and logical axes with an integer value, and a `QuantScale`
beside it (``<name>_scale``: the kernel's shape with its input axes of size 1, or int4's groups); the
block multiplies the two back in the compute dtype where it uses the kernel. Scales are not parameters, so nothing
trains them, and adapters (`tooln1.models.lora`) carry what training changes.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# kernel name -> how many of its axes after the layers axis are inputs (the einsum contracts them)
_INPUT_AXES = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}
_OWNER = {"q": "attention", "k": "attention", "v": "attention", "o": "attention", "gate": "mlp", "up": "mlp",
          "down": "mlp"}
_LEVELS = {"int8": (jnp.int8, 127), "int4": (jnp.int4, 7)}
INT4_GROUP = 32  # int4 inputs per scale: one scale per output channel loses too much (docs/training.md)


class QuantScale(nnx.Variable):
    """The per-channel scale of a quantized kernel (frozen, never trained)."""


def quantize(kernel: jax.Array, inputs: int, bits: str) -> tuple[jax.Array, jax.Array]:
    """(integer values, float32 scales) of a stacked kernel [layers, *in (``inputs`` axes), *out]: one
    scale per output channel, and for int4 per group of ``INT4_GROUP`` along the last input axis too."""
    dtype, top = _LEVELS[bits]
    w = kernel.astype(jnp.float32)
    last = inputs  # the last input axis
    group = INT4_GROUP if bits == "int4" and w.shape[last] % INT4_GROUP == 0 else w.shape[last]
    grouped = w.reshape(*w.shape[:last], w.shape[last] // group, group, *w.shape[last + 1:])
    # int8: over every input; int4: over one group, so each input row of a multi-axis input has its own
    reduce = (last + 1,) if bits == "int4" else (*range(1, last), last + 1)
    absmax = jnp.max(jnp.abs(grouped), axis=reduce, keepdims=True)
    scale = jnp.where(absmax > 0, absmax / top, 1.0)
    values = jnp.clip(jnp.round(grouped / scale), -top, top).reshape(w.shape).astype(dtype)
    return values, scale.squeeze(last + 1)


def quantize_block(block: nnx.Module, bits: str) -> None:
    """Quantize every projection kernel of the stacked ``block`` in place (``bits`` "none": nothing)."""
    if bits == "none":
        return
    if bits not in _LEVELS:
        raise ValueError(f"base quantization {bits!r}: expected none, int8 or int4")
    for name, inputs in _INPUT_AXES.items():
        module = getattr(block, _OWNER[name])
        kernel = getattr(module, f"{name}_kernel")
        axes = kernel.get_metadata()["logical_axes"]
        values, scale = quantize(kernel[...], inputs, bits)
        setattr(module, f"{name}_kernel", nnx.Param(values, logical_axes=axes))
        scale_axes = (axes[0], *(None,) * inputs, *axes[1 + inputs:])
        setattr(module, f"{name}_scale", QuantScale(scale, logical_axes=scale_axes))


def dense_kernel(module: nnx.Module, name: str, dtype: Any) -> jax.Array:
    """The kernel ``<name>_kernel`` of ``module`` in ``dtype``, dequantized when it is held quantized."""
    kernel = getattr(module, f"{name}_kernel")[...]
    scale = getattr(module, f"{name}_scale", None)
    if scale is None:
        return kernel.astype(dtype)
    scale = scale[...].astype(dtype)
    for axis, (n, m) in enumerate(zip(kernel.shape, scale.shape)):
        if m not in (1, n):  # a scale per group of n // m along this axis
            scale = jnp.repeat(scale, n // m, axis=axis)
    return kernel.astype(dtype) * scale


__all__ = ["QuantScale", "dense_kernel", "quantize", "quantize_block"]
