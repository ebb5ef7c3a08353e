"""Hugging Face checkpoints in: safetensors (or GGUF) -> sharded NNX parameters; `tooln1-convert`.

Import streams one tensor at a time from memory-mapped safetensors straight onto its
`NamedSharding`, so host memory peaks near the largest tensor rather than the whole model.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import SafetensorError, safe_open

from tooln1.checkpoints import gguf_file
from tooln1.checkpoints.hf_layout import (
    IGNORED_SUFFIXES,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    CheckpointError,
    tensor_map,
)
from tooln1.models.config import ModelConfig
from tooln1.models.decoder import CausalLM
from tooln1.sharding import named_sharding


# -- reading --------------------------------------------------------------------------------
@contextlib.contextmanager
def _open_safetensors(file: str) -> Iterator[Any]:
    """``safe_open`` whose failures (a truncated or garbage file) are a :class:`CheckpointError` naming it."""
    try:
        with safe_open(file, framework="numpy") as f:
            yield f
    except SafetensorError as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


def _read_config(path: str) -> dict[str, Any]:
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint directory not found: {path}")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{path}: no config.json (not a Hugging Face checkpoint directory)")
    try:
        with open(config_path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: invalid JSON ({e})") from None


def _weight_files(path: str) -> dict[str, str]:
    """Tensor name -> safetensors file, from the index or the single file."""
    index_path = os.path.join(path, SAFETENSORS_INDEX)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path}: no 'weight_map' object")
        missing = sorted({f for f in weight_map.values() if not os.path.isfile(os.path.join(path, f))})
        if missing:
            raise CheckpointError(f"{index_path} names shard files that do not exist: {', '.join(missing)}")
        return {name: os.path.join(path, f) for name, f in weight_map.items()}
    single = os.path.join(path, SAFETENSORS_SINGLE)
    if os.path.isfile(single):
        with _open_safetensors(single) as f:
            return {name: single for name in f.keys()}
    if any(n.endswith((".bin", ".pt", ".pth")) for n in os.listdir(path)):
        raise CheckpointError(f"{path}: only pickle weights (*.bin) found; tooln1 loads safetensors only")
    raise CheckpointError(f"{path}: no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX}")


def _iter_tensors(files: dict[str, str], names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield tensors one at a time, opening each shard once."""
    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    for file, file_names in by_file.items():
        with _open_safetensors(file) as f:
            for name in file_names:
                yield name, f.get_tensor(name)


Source = tuple[dict[str, Any], list[str], Callable[[list[str]], Iterator[tuple[str, np.ndarray]]]]


def read_source(path: str) -> Source:
    """``(hf_config, tensor names, iterate)`` for an HF directory or a ``.gguf`` file; ``iterate(names)``
    yields ``(HF name, array in HF layout)`` one tensor at a time."""
    if path.endswith(".gguf"):
        return gguf_file.read_source(path)
    hf_config = _read_config(path)
    files = _weight_files(path)
    return hf_config, list(files), lambda names: _iter_tensors(files, names)


def _place(value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """Put a host array on its sharding; each process only materialises its own shards."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _sharding(logical_axes, shape, mesh: Mesh | None) -> jax.sharding.Sharding:
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return named_sharding(logical_axes, shape, mesh)


class _StackedParameter:
    """A [num_layers, ...] parameter filled one layer at a time on its devices: the host never holds
    more than one layer's tensor, the devices the stack plus that one slice."""

    def __init__(self, variable: Any, dtype: Any, mesh: Mesh | None):
        shape, axes = variable.get_value().shape, variable.get_metadata()["logical_axes"]
        self.layer_shape = shape[1:]
        self.layer_sharding = _sharding(axes[1:], shape[1:], mesh)
        sharding = _sharding(axes, shape, mesh)
        self.value = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()
        self._set = jax.jit(lambda stack, x, i: jax.lax.dynamic_update_index_in_dim(stack, x, i, 0),
                            donate_argnums=0, out_shardings=sharding)

    def set(self, layer: int, value: np.ndarray) -> None:
        self.value = self._set(self.value, _place(value, self.layer_sharding), np.int32(layer))


def load_model(
    path: str,
    dtype: str = "float32",
    mesh: Mesh | None = None,
    compute_dtype: str | None = None,
    remat: bool = False,
    **model_options: Any,
) -> CausalLM:
    """Load an HF Qwen2/Llama checkpoint directory (or a llama.cpp ``.gguf`` file) as a `CausalLM`.

    ``dtype`` is the parameter dtype; ``compute_dtype`` (default: ``dtype``) that of activations.
    With a ``mesh`` each parameter is placed directly on its `NamedSharding`. ``model_options``
    set how it runs (`ModelConfig` fields: ``attention``, ``remat_policy``, ``scan_layers``, ...).
    """
    hf_config, names, iterate = read_source(path)
    try:
        config = ModelConfig.from_hf(hf_config, param_dtype=dtype, dtype=compute_dtype or dtype, remat=remat)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}/config.json: missing or invalid field {e}") from None
    except ValueError as e:
        raise CheckpointError(f"{path}/{e}") from None
    config = config.replace(**model_options)  # a bad option is the caller's error, not the checkpoint's
    table = tensor_map(config)
    ignored = {n for n in names if n.endswith(IGNORED_SUFFIXES)}
    if config.tie_word_embeddings and "lm_head.weight" in names:
        ignored.add("lm_head.weight")  # some exporters duplicate the tied head
    unexpected = sorted(set(names) - set(table) - ignored)
    missing = sorted(set(table) - set(names))
    if missing:
        raise CheckpointError(f"{path}: missing tensors {', '.join(missing[:8])}"
                              + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected tensors {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else "")
            + f" (config.json says {config.architecture}, tie_word_embeddings={config.tie_word_embeddings})"
        )

    abstract = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0), mesh=mesh))
    graphdef, state = nnx.split(abstract)
    variables = dict(nnx.to_flat_state(state))
    param_dtype = jnp.dtype(dtype)
    stacks = {target: _StackedParameter(variables[target], param_dtype, mesh)
              for target, layer, _, _ in table.values() if layer == 0}
    for name, tensor in iterate(list(table)):
        target, layer, to_ours, _ = table[name]
        variable = variables[target]
        expected = variable.get_value().shape if layer is None else stacks[target].layer_shape
        try:
            value = to_ours(tensor)
        except ValueError:
            value = None
        if value is None or value.shape != expected:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, which does not fit the model "
                f"described by config.json (expected {expected} after transposing to our layout)"
            )
        value = np.asarray(value, dtype=param_dtype)
        if layer is None:
            sharding = _sharding(variable.get_metadata()["logical_axes"], value.shape, mesh)
            variables[target] = variable.replace(value=_place(value, sharding))
        else:
            stacks[target].set(layer, value)
    for target, stack in stacks.items():
        variables[target] = variables[target].replace(value=stack.value)
    model = nnx.merge(graphdef, nnx.from_flat_state(variables))
    model.source_dir = os.path.abspath(path)
    model.hf_config_json = json.dumps(hf_config, sort_keys=True)
    return model


def main(argv: list[str] | None = None) -> None:
    """`tooln1-convert SRC DST`: load an HF checkpoint (or a .gguf file) into JAX and write it as an HF checkpoint."""
    parser = argparse.ArgumentParser(prog="tooln1-convert", description=main.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("src", help="HF checkpoint directory (config.json + safetensors) or a llama.cpp .gguf file")
    parser.add_argument("dst", help="output directory")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype written")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors file written")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.src, dtype=args.dtype)
    except CheckpointError as e:
        raise SystemExit(f"tooln1-convert: {e}") from None
    model.save_pretrained(args.dst, max_shard_size=args.max_shard_size)
    if args.src.endswith(".gguf") and jax.process_index() == 0:
        gguf_file.load_tokenizer(args.src).save_pretrained(args.dst)
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"converted {args.src} -> {args.dst}: {config_summary(model.config)}, {n:,} parameters")


def config_summary(config: ModelConfig) -> str:
    return (f"{config.architecture} L={config.num_layers} d={config.hidden_size} heads={config.num_heads}/"
            f"{config.num_kv_heads} vocab={config.vocab_size} tied={config.tie_word_embeddings}")


if __name__ == "__main__":
    main()
