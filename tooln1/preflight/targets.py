"""Compile-only targets for ``tooln1-fit``: a name -> the devices XLA compiles for, and their HBM.

TPU targets come from libtpu's topology descriptions (``jax.experimental.topologies``), which
need no TPU: ``pip install "jax[tpu]"`` on any Linux machine and set ``JAX_PLATFORMS=cpu`` and
``TPU_SKIP_MDS_QUERY=1`` before jax is imported (:func:`prepare_environment`).

GPU targets (``h100-80gb:8``, ``h200:8``, ``a100-80gb:8`` and their ``:1``) come from the CUDA
plugin (``pip install "jax[cuda12]"``, no GPU needed): XLA:GPU compiles for a device it is told
about in a ``GpuTargetConfigProto`` text proto, which :func:`gpu_target_config` writes from the
published figures in :data:`GPUS`. Their ``hbm_bytes`` is what JAX's allocator may hand out:
``XLA_PYTHON_CLIENT_MEM_FRACTION`` (JAX's default 0.75) of the memory CUDA reports
(:func:`usable_gpu_bytes`), read when the target is asked for, as a run would read it.

The ``cpu:N`` target compiles for N host devices (tests; ``--xla_force_host_platform_device_count``).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

GiB = 1024**3
MiB = 1024**2


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
    gpu: str = ""  # GPUS key of a cuda target
    peak_flops: float = 0.0  # dense bf16 FLOP/s per device (0: unknown, no roofline)
    hbm_bandwidth: float = 0.0  # bytes / s per device

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "platform": self.platform, "device_kind": self.device_kind,
                "num_devices": self.num_devices, "hbm_bytes": self.hbm_bytes}


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """What XLA:GPU reads from a device to compile for it, for one GPU model (NVIDIA's datasheets
    and the CUDA programming guide's per-compute-capability tables)."""

    name: str  # the CUDA device name, which jax reports as device_kind
    compute_capability: tuple[int, int]
    sm_count: int
    fp32_lanes_per_sm: int
    shared_memory_per_sm: int  # bytes
    shared_memory_per_block_optin: int  # bytes
    l2_cache_bytes: int
    boost_clock_ghz: float
    memory_bytes: int  # total device memory as CUDA reports it: the HBM less what the driver keeps
    memory_bandwidth: float  # bytes / s
    peak_bf16_flops: float  # dense (no sparsity), FLOP/s


# Memory: NVML (nvidia-smi) reports 81,559 MiB on an H100 80GB HBM3, 81,920 MiB on an A100 80GB and
# 143,771 MiB on an H200; CUDA's total (cudaMemGetInfo, what XLA and JAX's allocator see) is below
# that by the driver's reservation: 81,008 MiB on the H100, 81,158 MiB on the A100 (the totals XLA's
# GPU spec files record for those devices); the H200's is taken as its NVML figure less the H100's
# 551 MiB (same Hopper driver): 139.9 GiB.
GPUS: dict[str, GpuSpec] = {
    "h100-80gb": GpuSpec("NVIDIA H100 80GB HBM3", (9, 0), 132, 128, 228 * 1024, 227 * 1024, 50 * MiB, 1.98,
                         81_008 * MiB, 3.35e12, 989e12),
    "h200": GpuSpec("NVIDIA H200", (9, 0), 132, 128, 228 * 1024, 227 * 1024, 50 * MiB, 1.98,
                    (143_771 - 551) * MiB, 4.8e12, 989e12),
    "a100-80gb": GpuSpec("NVIDIA A100-SXM4-80GB", (8, 0), 108, 64, 164 * 1024, 163 * 1024, 40 * MiB, 1.41,
                         81_158 * MiB, 2.039e12, 312e12),
}

JAX_DEFAULT_MEM_FRACTION = 0.75  # XLA_PYTHON_CLIENT_MEM_FRACTION unset: JAX preallocates 75 % of the total


def usable_gpu_bytes(spec: GpuSpec) -> int:
    """What JAX's GPU allocator may hand out on one device: the memory fraction of CUDA's total
    (``XLA_PYTHON_CLIENT_MEM_FRACTION``, default 0.75, with or without preallocation)."""
    fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "") or JAX_DEFAULT_MEM_FRACTION)
    return int(spec.memory_bytes * fraction)


def gpu_target_config(spec: GpuSpec, dnn_version: tuple[int, int, int] = (9, 0, 0)) -> str:
    """The ``stream_executor.GpuTargetConfigProto`` text proto that describes ``spec`` to XLA:GPU.

    The limits written as constants (threads, blocks, registers) are those of compute capabilities
    8.0 and 9.0 (the CUDA programming guide's table), which every GPU in :data:`GPUS` has."""
    major, minor = spec.compute_capability
    fields = {
        "threads_per_block_limit": 1024, "threads_per_warp": 32, "shared_memory_per_block": 48 * 1024,
        "shared_memory_per_core": spec.shared_memory_per_sm, "threads_per_core_limit": 2048,
        "core_count": spec.sm_count, "fpus_per_core": spec.fp32_lanes_per_sm,
        "block_dim_limit_x": 2**31 - 1, "block_dim_limit_y": 65535, "block_dim_limit_z": 65535,
        "memory_bandwidth": int(spec.memory_bandwidth), "l2_cache_size": spec.l2_cache_bytes,
        "clock_rate_ghz": spec.boost_clock_ghz, "device_memory_size": spec.memory_bytes,
        "shared_memory_per_block_optin": spec.shared_memory_per_block_optin,
        "registers_per_core_limit": 65536, "registers_per_block_limit": 65536,
    }
    info = "".join(f"  {k}: {v}\n" for k, v in fields.items())
    info += f"  cuda_compute_capability {{\n    major: {major}\n    minor: {minor}\n  }}\n"
    info += f'  name: "{spec.name}"\n'
    d_major, d_minor, d_patch = dnn_version
    return (f"gpu_device_info {{\n{info}}}\nplatform_name: \"CUDA\"\n"
            f"dnn_version_info {{\n  major: {d_major}\n  minor: {d_minor}\n  patch: {d_patch}\n}}\n"
            f'device_description_str: "{spec.name}"\n')


def _tpu(name, kind, chips, hbm_gib, topology, peak, megacore=False, wrap=(False, False, False),
         chips_per_host=(2, 2, 1)) -> Target:
    flops, bandwidth = peak
    return Target(name, "tpu", kind, chips, int(hbm_gib * GiB), topology, "megacore" if megacore else "default",
                  chips_per_host, wrap, peak_flops=flops, hbm_bandwidth=bandwidth)


def _gpu(gpu: str, devices: int) -> Target:
    spec = GPUS[gpu]
    return Target(f"{gpu}:{devices}", "cuda", spec.name, devices, usable_gpu_bytes(spec), gpu=gpu,
                  peak_flops=spec.peak_bf16_flops, hbm_bandwidth=spec.memory_bandwidth)


# HBM per chip: v4 32 GiB, v5e 16 GiB, v5p 95 GiB (Cloud TPU system-architecture pages); peak bf16
# FLOP/s and HBM bytes/s per chip from the same pages (a megacore device is one chip).
V4, V5E, V5P = (275e12, 1.2e12), (197e12, 0.82e12), (459e12, 2.76e12)
TARGETS: dict[str, Target] = {t.name: t for t in (
    _tpu("tpu-v5e-4", "TPU v5 lite", 4, 16, "v5e:2x2", V5E),
    _tpu("tpu-v5e-8", "TPU v5 lite", 8, 16, "v5e:2x4", V5E, chips_per_host=(2, 4, 1)),  # one host of 8 chips
    _tpu("tpu-v5e-64", "TPU v5 lite", 64, 16, "v5e:8x8", V5E),
    _tpu("tpu-v4-32", "TPU v4", 16, 32, "v4:2x2x4", V4, megacore=True),
    _tpu("tpu-v5p-32", "TPU v5", 16, 95, "v5:2x2x4", V5P, megacore=True),
    _tpu("tpu-v5p-128", "TPU v5", 64, 95, "v5:4x4x4", V5P, megacore=True, wrap=(True, True, True)),
    *(_gpu(gpu, n) for gpu in GPUS for n in (1, 8)),  # one GPU, one 8-GPU node
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
    target = TARGETS[name]
    if target.platform == "cuda":  # the memory fraction as this process's environment sets it now
        target = dataclasses.replace(target, hbm_bytes=usable_gpu_bytes(GPUS[target.gpu]))
    return target


def prepare_environment() -> None:
    """What libtpu needs to compile without a TPU; call before jax is imported. (Without a TPU to
    share, several compiling processes may load libtpu at once: skip its lockfile.) The CUDA
    plugin's topologies need only ``JAX_PLATFORMS=cpu`` (no GPU to initialise)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def cuda_plugin_installed() -> bool:
    return importlib.util.find_spec("jax_plugins") is not None and any(
        importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") is not None for v in (12, 13))


def _installed_cudnn_version() -> tuple[int, int, int]:
    """The cuDNN the plugin would run with (XLA:GPU's fusion choices depend on it); 9.0 if unknown."""
    try:
        from jax_cuda12_plugin import _versions

        v = int(_versions.cudnn_get_version())  # e.g. 92800 = 9.28.0
        return v // 10000, v // 100 % 100, v % 100
    except (ImportError, AttributeError, RuntimeError):
        return 9, 0, 0


def target_devices(target: Target) -> list[Any]:
    """The (compile-only, for TPU and GPU) devices of ``target``."""
    import jax

    if target.platform == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < target.num_devices:
            raise TargetError(f"target {target.name}: only {len(devices)} host devices; set XLA_FLAGS="
                              f"--xla_force_host_platform_device_count={target.num_devices} before starting")
        return devices[: target.num_devices]
    from jax.experimental import topologies

    if target.platform == "cuda":
        if not cuda_plugin_installed():
            raise TargetError(f"target {target.name} needs the CUDA plugin: "
                              f"pip install 'jax[cuda12]=={jax.__version__}' (compiles without a GPU)")
        try:  # topology: slices x hosts per slice x devices per host (one host: an NVLink node)
            topo = topologies.get_topology_desc(
                platform="cuda", topology_name="", topology=f"1x1x{target.num_devices}",
                target_config=gpu_target_config(GPUS[target.gpu], _installed_cudnn_version()))
        except NotImplementedError:  # the plugin did not register: no GPU and JAX_PLATFORMS unset
            raise TargetError(f"target {target.name}: the CUDA plugin did not load (without a GPU its CUDA check "
                              "fails unless JAX_PLATFORMS=cpu is set before jax starts)") from None
    else:
        try:
            import libtpu  # noqa: F401
        except ImportError:
            raise TargetError(f"target {target.name} needs libtpu: pip install 'jax[tpu]=={jax.__version__}' "
                              "(compiles without a TPU)") from None
        prepare_environment()  # libtpu reads these when the topology call loads it
        topo = topologies.get_topology_desc(
            topology_name=target.topology, platform="tpu", chip_config_name=target.chip_config,
            chips_per_host_bounds=target.chips_per_host, num_slices=1, wrap=target.wrap)
    devices = list(topo.devices)
    if len(devices) != target.num_devices:
        raise TargetError(f"target {target.name}: topology {target.topology or target.gpu} has {len(devices)} "
                          f"devices, expected {target.num_devices}")
    return devices


def target_of_devices(devices: list[Any]) -> Target | None:
    """The target whose peaks a run on ``devices`` (a GPU or TPU kind this module knows) is measured
    against, for that many devices; None on a CPU or an unknown kind."""
    kind = devices[0].device_kind if devices else ""
    known = next((t for t in TARGETS.values() if t.device_kind == kind and t.peak_flops), None)
    if known is None:
        return None
    return dataclasses.replace(known, name=f"{kind} ×{len(devices)}", num_devices=len(devices))
