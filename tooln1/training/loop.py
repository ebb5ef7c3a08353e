"""A training run: optional SFT warm-up, then GRPO, then HF export (``tooln1-train``; keys in docs/training.md).

`train` builds the run's context once (`tooln1.training.context`) and hands it to each phase; a
phase resumes from its newest checkpoint by itself, so re-running a killed command continues it,
and re-running a finished one says so and changes nothing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax

from tooln1.checkpoints.peft_adapters import save_adapters
from tooln1.config import ConfigError, validate_config
from tooln1.training.context import RunContext, build_context, phase_checkpointer, say
from tooln1.training.grpo_phase import GRPOPhase
from tooln1.training.metrics import plot_curves
from tooln1.training.sft_phase import finished_sft_model, run_sft
from tooln1.training.validation import validate


@dataclasses.dataclass
class TrainingRun:
    summary: dict[str, Any]  # also <workdir>/summary.json
    model: Any = None  # the final policy; None when the workdir held a finished run
    context: RunContext | None = None


def train(cfg: Any) -> dict[str, Any]:
    """Run a config (an ml-collections ConfigDict); returns the summary (also in <workdir>/summary.json)."""
    return run_training(cfg).summary


def run_training(cfg: Any) -> TrainingRun:
    """`train`, keeping the final policy and the run's context (for tests and notebooks)."""
    t_start = time.perf_counter()
    workdir = prepare_workdir(cfg)
    finished = finished_summary(cfg, workdir)
    if finished is not None:
        return TrainingRun(finished)
    ctx = build_context(cfg, workdir)
    summary: dict[str, Any] = {"workdir": workdir, "model_path": ctx.model_path, "data": dict(ctx.data_stats),
                               "loss_agg": {"sft": cfg.sft.loss_agg if cfg.sft.enabled else None,
                                            "grpo": cfg.grpo.loss_agg if cfg.grpo.enabled else None}}
    model = ctx.model
    if cfg.sft.enabled:
        model = _sft(ctx, model, summary)
    if cfg.grpo.enabled:
        model = _grpo(ctx, model, summary)
    if cfg.export.enabled:
        summary["export_dir"] = export(ctx, model)
    summary["wall_seconds"] = time.perf_counter() - t_start
    _finish(ctx, summary)
    return TrainingRun(summary, model, ctx)


def prepare_workdir(cfg: Any) -> str:
    """Validate the config, then create the workdir and point JAX's compile cache into it."""
    workdir = os.path.abspath(cfg.workdir)
    validate_config(cfg)  # before the workdir exists: an invalid config leaves nothing behind
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"config.workdir={cfg.workdir!r}: cannot create {workdir} ({e.strerror})") from None
    if cfg.compile_cache_dir:  # a relative path is under the workdir, wherever --config.workdir moved it
        # normalized: the path is part of every cache key (XLA's autotune-cache option), so runs/a/../jax_cache
        # and runs/b/../jax_cache would never share an entry
        cache = os.path.normpath(os.path.join(workdir, cfg.compile_cache_dir))
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return workdir


def finished_summary(cfg: Any, workdir: str) -> dict[str, Any] | None:
    """The summary of a run already finished in ``workdir`` (summary.json written and the last phase's
    checkpoint marked done with no more steps configured), said in one line; else None."""
    phase = "grpo" if cfg.grpo.enabled else "sft"
    summary_path = os.path.join(workdir, "summary.json")
    if not (cfg.checkpoint.resume and os.path.isfile(summary_path)
            and os.path.isdir(os.path.join(workdir, "checkpoints", phase))):
        return None
    checkpoints = phase_checkpointer(cfg, workdir, phase)
    try:
        meta = checkpoints.restore_meta()
    finally:
        checkpoints.close()
    if not meta or not meta.get("done") or int(meta["step"]) < cfg[phase].steps:
        return None
    say(f"{workdir}: finished at step {meta['step']}; use a new workdir or --config.checkpoint.resume=false")
    with open(summary_path, encoding="utf-8") as f:
        return json.load(f)


def _sft(ctx: RunContext, model: Any, summary: dict[str, Any]) -> Any:
    """The SFT'd model: trained now, or read back from a finished SFT phase once GRPO has begun."""
    cfg = ctx.cfg
    if cfg.grpo.enabled and cfg.checkpoint.resume and _has_checkpoint(ctx, "grpo"):
        model = finished_sft_model(ctx, model)
        if model is None:
            raise RuntimeError(f"{ctx.workdir}: a GRPO checkpoint exists but no finished SFT checkpoint; "
                               "cannot rebuild the GRPO reference policy")
        return model
    model, result = run_sft(ctx, model)
    summary.update(sft_steps=result.steps, sft_seconds=result.seconds)
    summary["data"].update(result.data)
    if not cfg.grpo.enabled:
        summary["val_after_sft"] = validate(ctx, model, result.steps, "after SFT")
    return model


def _grpo(ctx: RunContext, model: Any, summary: dict[str, Any]) -> Any:
    model, result = GRPOPhase(ctx, model).run()
    summary.update(grpo_steps=result.steps, grpo_seconds=result.seconds, val_before_grpo=result.val_before)
    summary["val_after_grpo"] = validate(ctx, model, result.steps, "after GRPO")
    return model


def _has_checkpoint(ctx: RunContext, phase: str) -> bool:
    checkpoints = ctx.checkpointer(phase)
    try:
        return checkpoints.latest_step() is not None
    finally:
        checkpoints.close()


def export(ctx: RunContext, model: Any) -> str:
    """The policy as an HF checkpoint (with the run's tokenizer) in ``export.dir`` or <workdir>/hf_export; a
    LoRA run's adapters also as a PEFT adapter directory beside it (``peft_adapter``)."""
    out = ctx.cfg.export.dir or os.path.join(ctx.workdir, "hf_export")
    model.save_pretrained(out)
    if jax.process_index() == 0 and not os.path.isfile(os.path.join(out, "tokenizer_config.json")):
        ctx.tokenizer.save_pretrained(out)
    say(f"exported the policy as an HF checkpoint to {out}")
    if model.config.lora_rank:
        adapters = os.path.join(os.path.dirname(os.path.abspath(out)), "peft_adapter")
        save_adapters(model, adapters, os.path.abspath(ctx.model_path))
        say(f"its adapters alone, for peft on {ctx.model_path}, in {adapters}")
    return out


def _finish(ctx: RunContext, summary: dict[str, Any]) -> None:
    """Close the metrics; process 0 writes summary.json and curves.png and says the rewards."""
    ctx.writer.close()
    if jax.process_index() != 0:
        return
    with open(os.path.join(ctx.workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    curves = os.path.join(ctx.workdir, "curves.png")
    plot_curves(os.path.join(ctx.workdir, "metrics.jsonl"), curves)
    say(f"training curves in {curves}")
    if summary.get("val_before_grpo") is not None:
        say(f"validation reward before GRPO: {summary['val_before_grpo']:.3f}  after GRPO: "
            f"{summary['val_after_grpo']:.3f}  ({summary['wall_seconds']:.0f} s in all)")


__all__ = ["TrainingRun", "export", "finished_summary", "prepare_workdir", "run_training", "train"]
