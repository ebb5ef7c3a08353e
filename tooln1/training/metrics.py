"""Training metrics: tensorboardX scalars + a JSONL log, a tqdm progress bar, and the MFU estimate.

MFU (model FLOPs utilisation) of the *update*: the FLOPs the trainer spends on the rollout batch
(`tooln1.models.flops.update_flops`: the log-prob forwards it runs and the training forward +
backward over the padded tokens it computes) divided by the update wall time and by the peak FLOP/s
of all devices: ``log.peak_tflops`` per device when set, else a table by device kind (bf16 dense),
else (CPU) a measured float32 matmul rate.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

# Dense bf16 peak TFLOP/s per device by jax device_kind substring.
PEAK_TFLOPS = {
    "H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0, "TPU v6": 918.0,
}


_MEASURED: dict[int, float] = {}


def measure_matmul_tflops(n: int = 512, repeats: int = 5) -> float:
    """Best float32 ``n × n`` matmul TFLOP/s of one device over ``repeats`` (the CPU's MFU peak; cached)."""
    if n not in _MEASURED:
        a = jnp.ones((n, n), jnp.float32)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            f(a).block_until_ready()
            best = min(best, time.perf_counter() - t)
        _MEASURED[n] = 2 * n**3 / max(best, 1e-9) / 1e12
    return _MEASURED[n]


def peak_flops(peak_tflops_per_device: float = 0.0) -> float:
    """Peak FLOP/s of all devices."""
    devices = jax.devices()
    if peak_tflops_per_device and peak_tflops_per_device > 0:
        return peak_tflops_per_device * 1e12 * len(devices)
    kind = devices[0].device_kind
    for name, tflops in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return tflops * 1e12 * len(devices)
    # CPU: the devices share the host's cores, so the measured rate of one is the machine's.
    return measure_matmul_tflops() * 1e12


def grpo_scalars(rollout: Any, group_size: int, truncated: float, update: Mapping[str, Any],
                 seconds: Mapping[str, float], *, real_tokens: float, update_flops: float, peak_flops: float,
                 epoch: int) -> dict[str, float]:
    """One GRPO step's logged scalars (docs/training.md): rewards, lengths, loss and optimizer
    metrics (``update``: `tooln1.training.updater.Updater.step`'s, fetched), times (``seconds``: sample,
    update, step, score, rollout_device, rollout_prefill, refresh_weights) and throughput (``real_tokens``: prompt +
    response tokens of the global batch)."""
    rewards, lengths = rollout.rewards, rollout.out.mask.sum(-1)
    return {
        "reward/mean": rewards.mean(), "reward/std": rewards.std(),
        **{f"reward/{k}": v.mean() for k, v in rollout.diagnostics.items()},
        "response/length_mean": lengths.mean(), "response/length_min": lengths.min(),
        "response/length_max": lengths.max(), "response/truncated": truncated,
        "loss/total": update["loss"], "loss/pg": update["pg_loss"], "loss/kl": update["kl"],
        "loss/entropy": update.get("entropy", np.nan), "loss/clip_frac": update["clip_frac"],
        "loss/ratio_max": update["ratio_max"], "loss/ratio_min": update["ratio_min"],
        "loss/approx_kl_old": update["approx_kl_old"], "loss/sampler_gap": update.get("sampler_gap", np.nan),
        "loss/sampler_gap_max": update.get("sampler_gap_max", np.nan),
        "optim/grad_norm": update["grad_norm"], "optim/grad_norm_max": update["grad_norm_max"],
        "optim/learning_rate": update.get("learning_rate", np.nan), "optim/skipped": update["skipped"],
        "groups/all_equal": float((np.ptp(rewards.reshape(-1, group_size), axis=1) == 0).mean()),
        "perf/tokens_per_s": real_tokens / seconds["step"],
        **{f"time/{k}": v for k, v in seconds.items()},
        "perf/update_tflops": update_flops / 1e12, "perf/mfu": update_flops / seconds["update"] / peak_flops,
        "data/epoch": float(epoch),
    }


def _scalar(v: Any) -> float | None:
    try:
        f = float(np.asarray(v))
    except (TypeError, ValueError):
        return None
    return f


class MetricsWriter:
    """Scalars to tensorboard (``<logdir>``) and one JSON object per write to ``<logdir>/metrics.jsonl``."""

    def __init__(self, logdir: str, tensorboard: bool = True, enabled: bool = True):
        self.logdir = logdir
        self.enabled = enabled and jax.process_index() == 0
        self._tb = None
        self._jsonl = None
        if not self.enabled:
            return
        os.makedirs(logdir, exist_ok=True)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir)
        self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a", encoding="utf-8")

    def write(self, step: int, scalars: Mapping[str, Any], **extra: Any) -> dict[str, float]:
        clean = {k: s for k, s in ((k, _scalar(v)) for k, v in scalars.items()) if s is not None}
        if not self.enabled:
            return clean
        if self._tb is not None:
            for k, v in clean.items():
                if math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        record = {"step": int(step), **extra, **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(record, sort_keys=True) + "\n")
        self._jsonl.flush()
        return clean

    def forget(self, drop: Callable[[Mapping[str, Any]], bool]) -> None:
        """Remove the metrics.jsonl rows ``drop`` selects (the steps a resumed phase redoes)."""
        if self._jsonl is None:
            return
        self._jsonl.close()
        path = os.path.join(self.logdir, "metrics.jsonl")
        rewrite_jsonl(path, drop)
        self._jsonl = open(path, "a", encoding="utf-8")

    def text(self, tag: str, text: str, step: int) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(tag, text, step)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


class Progress:
    """A tqdm bar (``enabled``) over ``total`` steps starting at ``initial``; ``update(postfix)``."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", enabled: bool = True):
        self.bar = None
        if enabled and jax.process_index() == 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, smoothing=0.1)

    def update(self, postfix: Mapping[str, Any] | None = None, n: int = 1) -> None:
        if self.bar is None:
            return
        if postfix:
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                 refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


CURVES = (  # (title, metrics.jsonl key, phases whose rows carry it)
    ("GRPO reward (train mean)", "reward/mean", ("grpo",)),
    ("validation accuracy (greedy binary reward)", "val/accuracy", None),
    ("KL to the reference (k3)", "loss/kl", ("grpo",)),
    ("response length (mean tokens)", "response/length_mean", ("grpo",)),
)


def rewrite_jsonl(path: str, drop: Callable[[Mapping[str, Any]], bool]) -> None:
    """Rewrite the JSON-lines file at ``path`` without the rows ``drop`` selects (atomically)."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if not drop(json.loads(line))]
    if len(kept) == len(lines):
        return
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``, a resumed run's later writes of a step replacing earlier ones."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows[(str(r.get("phase")), int(r["step"]))] = r
    return list(rows.values())


def plot_curves(metrics_path: str, out_path: str) -> None:
    """The paper-style training curves of a run — reward, validation accuracy, KL and response length
    against the GRPO step — as one PNG (matplotlib's Agg canvas, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_path)
    fig = Figure(figsize=(10, 7), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (title, key, phases) in enumerate(CURVES):
        ax = fig.add_subplot(2, 2, i + 1)
        pts = sorted((r["step"], r[key]) for r in rows
                     if isinstance(r.get(key), (int, float)) and (phases is None or r.get("phase") in phases))
        if pts:
            ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, markersize=3)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.savefig(out_path, dpi=100)


__all__ = ["MetricsWriter", "Progress", "plot_curves", "read_metrics", "peak_flops", "measure_matmul_tflops",
           "PEAK_TFLOPS"]
