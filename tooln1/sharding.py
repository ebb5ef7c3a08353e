"""Device mesh and the single table mapping logical axis names to mesh axes.

Parameters and activations are annotated with *logical* axis names ("embed", "heads", ...);
`LOGICAL_RULES` decides which mesh axis each one is split over. A dimension that the mesh axis does
not divide is replicated instead, so e.g. Qwen2.5-0.5B's 2 KV heads work on a tensor axis of 4.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the mesh axes the batch dimension is split over (the "batch" rule below)

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("length", None),
    ("layers", None),
    ("norm", None),
    ("lora_rank", None),
)
# The rollout engine's decoding copy: tensor-parallel where the tensor axis divides, whole on every
# batch shard (each decodes its own slots from a full copy)
INFERENCE_RULES: tuple[tuple[str, Any], ...] = tuple(
    (name, None if name == "embed" else axes) for name, axes in LOGICAL_RULES)


def make_mesh(shape: Mapping[str, int] | Sequence[int] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh over ``devices`` (default: all) with axes (data, fsdp, tensor).

    ``shape`` is a dict or a 3-sequence; one entry may be -1 to take the remaining devices.
    The default puts every device on fsdp. Devices are grouped by process (stable order within one),
    so on several hosts each process holds a contiguous, process-ordered share of the batch axes:
    the layout that process-local batches (`tooln1.data.iterator.global_array`, sampling) assume.
    """
    devices = sorted(jax.devices() if devices is None else devices, key=lambda d: d.process_index)
    if shape is None:
        shape = {"fsdp": -1}
    if not isinstance(shape, Mapping):
        if len(shape) != len(MESH_AXES):
            raise ValueError(f"mesh shape {tuple(shape)} must have one size per axis {MESH_AXES}")
        shape = dict(zip(MESH_AXES, shape))
    sizes = resolve_mesh_shape(shape, len(devices))
    return Mesh(np.asarray(devices).reshape([sizes[a] for a in MESH_AXES]), MESH_AXES)


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """``{axis: size}`` for every mesh axis (missing ones are 1), the -1 entry taking the devices the
    others leave; ``ValueError`` naming the shape when it does not fit ``num_devices``."""
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh shape {dict(shape)}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if known <= 0 or num_devices % known:
            raise ValueError(f"mesh shape {dict(shape)} does not divide the {num_devices} available devices")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices or min(sizes) < 1:
        raise ValueError(
            f"mesh shape {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"but {num_devices} are available ({jax.default_backend()})"
        )
    return dict(zip(MESH_AXES, sizes))


def platform(mesh: Mesh | None) -> str:
    """The platform programs for ``mesh`` compile for ("cpu", "gpu", "tpu"; compile-only devices
    included); without a mesh, the default device's."""
    return (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform


def batch_axes(mesh: Mesh | None) -> tuple[str, ...]:
    """The mesh's batch axes that split it (size > 1), in `BATCH_AXES` order; () without a mesh."""
    if mesh is None:
        return ()
    return tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)


def batch_shards(mesh: Mesh | Mapping[str, int] | None) -> int:
    """How many ways the batch axis is split: the product of the mesh's (or shape's) data and fsdp
    sizes; 1 without a mesh."""
    if mesh is None:
        return 1
    sizes = mesh.shape if isinstance(mesh, Mesh) else mesh
    return math.prod(int(sizes.get(a, 1)) for a in BATCH_AXES)


def per_batch_shard(fn, mesh: Mesh | None, *arrays: jax.Array) -> Any:
    """``fn`` on each device's rows, under ``shard_map``: every array (and output) leads with the batch,
    split over the batch axes and whole on each device otherwise. For what XLA cannot partition
    along the batch by itself: custom calls (Pallas and cuDNN kernels), and ``top_k``, whose rows
    XLA gathers from every shard."""
    axes = batch_axes(mesh)
    if not axes:
        return fn(*arrays)
    spec = PartitionSpec(axes)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(arrays), out_specs=spec, check_vma=False)(*arrays)


def logical_to_spec(
    logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=LOGICAL_RULES
) -> PartitionSpec:
    """PartitionSpec for an array; each mesh axis is used at most once and only where it divides."""
    table = dict(rules)
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match array shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no rule in LOGICAL_RULES")
        target = table.get(name) if name else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        chosen = []
        for axis in axes:
            size = mesh.shape[axis]
            if axis in used or size == 1:
                continue
            if dim % (math.prod(mesh.shape[a] for a in chosen) * size) == 0:
                chosen.append(axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def named_sharding(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh))


def constrain(x: jax.Array, logical_axes: Sequence[str | None], mesh: Mesh | None) -> jax.Array:
    """Sharding constraint on an activation inside jit; a no-op without a mesh."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(logical_axes, x.shape, mesh))


def state_shardings(state: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """The state with each variable's value replaced by its NamedSharding under ``rules`` (from its
    ``logical_axes`` metadata; replicated without)."""
    from flax import nnx

    def one(variable):
        axes = variable.get_metadata().get("logical_axes")
        shape = variable.get_value().shape
        spec = logical_to_spec(axes, shape, mesh, rules) if axes else PartitionSpec()
        return variable.replace(value=NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=lambda v: isinstance(v, nnx.Variable))
