"""Compile-only targets for ``tooln1-fit``: a name -> the devices XLA compiles for, and their HBM.

TPU targets come from libtpu's topology descriptions (``jax.experimental.topologies``), which
need no TPU: ``pip install "jax[tpu]"`` on any Linux machine and set ``JAX_PLATFORMS=cpu`` and
``TPU_SKIP_MDS_QUERY=1`` before jax is imported (:func:`prepare_environment`). The ``cpu:N``
target compiles for N host devices (tests; ``--xla_force_host_platform_device_count``).
GPU node targets are listed so the mesh presets can name them, but compiling for them needs the
CUDA plugin (``jax[cuda12]``) and is not implemented yet: asking for one is a one-line error.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Target:
    """One compile target: ``num_devices`` devices of ``device_kind`` with ``hbm_bytes`` each."""

    name: str
    platform: str  # "tpu" | "cuda" | "cpu"
    device_kind: str
    num_devices: int
    hbm_bytes: int
    topology: str = ""  # libtpu topology name, e.g. "v5:4x4x4"
    chip_config: str = "default"  # "megacore" for v4 / v5p (two TensorCores as one device)
    chips_per_host: tuple[int, int, int] = (2, 2, 1)
    wrap: tuple[bool, bool, bool] = (False, False, False)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "platform": self.platform, "device_kind": self.device_kind,
                "num_devices": self.num_devices, "hbm_bytes": self.hbm_bytes}


def _tpu(name, kind, chips, hbm_gib, topology, megacore=False, wrap=(False, False, False)) -> Target:
    return Target(name, "tpu", kind, chips, int(hbm_gib * GiB), topology, "megacore" if megacore else "default",
                  wrap=wrap)


# HBM per chip: v4 32 GiB, v5e 16 GiB, v5p 95 GiB (Cloud TPU system-architecture pages).
TARGETS: dict[str, Target] = {t.name: t for t in (
    _tpu("tpu-v5e-4", "TPU v5 lite", 4, 16, "v5e:2x2"),
    _tpu("tpu-v5e-64", "TPU v5 lite", 64, 16, "v5e:8x8"),
    _tpu("tpu-v4-32", "TPU v4", 16, 32, "v4:2x2x4", megacore=True),
    _tpu("tpu-v5p-32", "TPU v5", 16, 95, "v5:2x2x4", megacore=True),
    _tpu("tpu-v5p-128", "TPU v5", 64, 95, "v5:4x4x4", megacore=True, wrap=(True, True, True)),
    Target("h100-80gb:1", "cuda", "NVIDIA H100 80GB HBM3", 1, 80 * 10**9),
    Target("h100-80gb:8", "cuda", "NVIDIA H100 80GB HBM3", 8, 80 * 10**9),
)}


class TargetError(ValueError):
    """An unknown or unavailable target; the message is one line."""


def known_targets() -> list[str]:
    return sorted(TARGETS) + ["cpu:N"]


def get_target(name: str, cpu_hbm_bytes: int = 16 * GiB) -> Target:
    """The target called ``name``; ``cpu:N`` is N host devices with ``cpu_hbm_bytes`` each."""
    if name.startswith("cpu:") and name[4:].isdigit() and int(name[4:]) > 0:
        return Target(name, "cpu", "cpu", int(name[4:]), int(cpu_hbm_bytes))
    if name not in TARGETS:
        raise TargetError(f"unknown target {name!r}; known: {', '.join(known_targets())}")
    return TARGETS[name]


def prepare_environment() -> None:
    """What libtpu needs to compile without a TPU; call before jax is imported. (Without a TPU to
    share, several compiling processes may load libtpu at once: skip its lockfile.)"""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def target_devices(target: Target) -> list[Any]:
    """The (compile-only, for TPU) devices of ``target``."""
    import jax

    if target.platform == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < target.num_devices:
            raise TargetError(f"target {target.name}: only {len(devices)} host devices; set XLA_FLAGS="
                              f"--xla_force_host_platform_device_count={target.num_devices} before starting")
        return devices[: target.num_devices]
    if target.platform == "cuda":
        raise TargetError(f"target {target.name}: GPU compile-only targets are not implemented yet "
                          f"(they need jax[cuda12]); TPU targets: {', '.join(n for n in TARGETS if n.startswith('tpu'))}")
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise TargetError(f"target {target.name} needs libtpu: pip install 'jax[tpu]=={jax.__version__}' "
                          "(compiles without a TPU)") from None
    from jax.experimental import topologies

    prepare_environment()  # libtpu reads these when the topology call loads it
    topo = topologies.get_topology_desc(
        topology_name=target.topology, platform="tpu", chip_config_name=target.chip_config,
        chips_per_host_bounds=target.chips_per_host, num_slices=1, wrap=target.wrap)
    devices = list(topo.devices)
    if len(devices) != target.num_devices:
        raise TargetError(f"target {target.name}: topology {target.topology} has {len(devices)} devices, "
                          f"expected {target.num_devices}")
    return devices
