"""The training loop and ``tooln1-train``: optional SFT warm-up, then GRPO, then HF export.

    tooln1-train --config configs/quickstart.py
    tooln1-train --config configs/paper.py:model=qwen2.5-7b,mesh=gpu8,recipe=rl --config.grpo.batch_size=512

:class:`Trainer` builds what the phases share (mesh, model, tokenizer, records, metrics writer) and
runs them. The GRPO phase (DESIGN §8) is `tooln1.training.grpo_loop`: per step, the next batch of prompts
from the deterministic iterator (this process's share) → `tooln1.rollout.scoring.Rollouts` (G responses per
prompt, decoded and scored on the host) → ``compute_advantages`` → old and reference log-probs →
``Updater.step`` (``num_mini_batches`` optimizer steps). Periodic validation (:meth:`Trainer.validate`)
is the greedy mean binary reward on a held-out split. What both phases do around their steps —
resume, logging, checkpoints (orbax: params, optimizer state, step, data position, RNG) every
``checkpoint.every`` steps and at the end of each phase — is `tooln1.training.phase.Phase`; a restarted run
resumes from the latest checkpoint automatically. At the end the policy is exported as an HF checkpoint.

The SFT phase (Table 3 recipes, warm-starts) trains masked next-token CE on the assistant reply
``<think>…</think><tool_call>[…]</tool_call><|im_end|>`` (``sft.target="reason"``) or
``<tool_call>[…]</tool_call><|im_end|>`` (``"no_reason"``) with the same :class:`Updater`.
Config keys: docs/training.md.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from tooln1.config import ConfigError, parse_ratios, source_kind, split_specs, validate_config
from tooln1.data import prompt_batch, tokenize_prompts
from tooln1.data.tokens import decode_responses, left_pad

if TYPE_CHECKING:
    from tooln1.training.phase import PhaseResult

log = logging.getLogger("tooln1.training.loop")


# =============================================================================================
# data


def load_data(cfg: Any, tokenizer: Any, say=print) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Training and validation records: sources → mix → irrelevance → length filter → split."""
    from tooln1.data import add_irrelevance, filter_by_prompt_length, load_records_with_stats, mix, train_val_split

    by_kind: dict[str, list[dict]] = {}
    stats: dict[str, Any] = {}
    for spec in split_specs(cfg.data.sources):
        records, st = load_records_with_stats(spec)
        kind = source_kind(spec)
        by_kind.setdefault(kind, []).extend(records)
        stats[spec] = {"kept": st.kept, "dropped": dict(st.dropped)}
    ratios = parse_ratios(cfg.data.mix_ratios)
    records = mix(by_kind, ratios, seed=cfg.data.seed) if (len(by_kind) > 1 or ratios) else by_kind[next(iter(by_kind))]
    if cfg.data.irrelevance > 0:
        records = add_irrelevance(records, cfg.data.irrelevance, seed=cfg.data.seed)
    records, counts = filter_by_prompt_length(records, tokenizer, cfg.data.max_prompt_tokens)
    stats["length_filter"] = counts
    if cfg.data.val_spec:
        val, _ = load_records_with_stats(cfg.data.val_spec)
        val, _ = filter_by_prompt_length(val, tokenizer, cfg.data.max_prompt_tokens)
        if cfg.data.val_size:
            val = val[: cfg.data.val_size]
        train = records
    else:
        if cfg.data.val_size >= len(records):
            raise ConfigError(f"config.data.val_size={cfg.data.val_size} leaves no training data "
                              f"({len(records)} records after filtering)")
        train, val = train_val_split(records, val_size=cfg.data.val_size, seed=cfg.data.seed)
    stats.update(train=len(train), val=len(val))
    say(f"data: {len(train)} training / {len(val)} validation records "
        f"({counts['prompt_too_long']} dropped for prompts over {cfg.data.max_prompt_tokens} tokens)")
    return train, val, stats


def sft_response(record: dict, target: str, think_text: str, eos: str = "<|im_end|>") -> str:
    """The SFT target reply in the paper's format."""
    calls = json.dumps(record["answer"], ensure_ascii=False)
    body = f"<tool_call>{calls}</tool_call>{eos}"
    if target == "no_reason":
        return body
    think = record.get("reasoning")
    if not think:
        names = ", ".join(c["name"] for c in record["answer"]) or "no function"
        think = think_text.format(names=names)
    return f"<think>{think}</think>{body}"


# =============================================================================================
# the trainer


class Trainer:
    """Builds everything from a config; :meth:`run` trains and returns a summary dict."""

    def __init__(self, cfg: Any):
        import jax

        self.cfg = cfg
        self.workdir = os.path.abspath(cfg.workdir)
        self.t_start = time.perf_counter()
        validate_config(cfg)  # before the workdir exists: an invalid config leaves nothing behind
        try:
            os.makedirs(self.workdir, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"config.workdir={cfg.workdir!r}: cannot create {self.workdir} ({e.strerror})") from None
        self.process_index = jax.process_index()
        self.loop_steps = 0  # steps run by this process (debug.kill_after_steps)
        self.finished_at = self._finished_step()
        if self.finished_at is not None:
            return  # run() says so and changes nothing: no metrics writer, no new event file
        from tooln1.training.metrics import MetricsWriter

        if cfg.compile_cache_dir:
            import jax

            jax.config.update("jax_compilation_cache_dir", os.path.abspath(cfg.compile_cache_dir))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        self.writer = MetricsWriter(self.workdir, tensorboard=cfg.log.tensorboard)

    # -- small helpers ----------------------------------------------------------------------
    def say(self, msg: str) -> None:
        if self.process_index == 0:
            print(f"[tooln1-train] {msg}", flush=True)
        log.info(msg)

    def killed(self) -> bool:
        """``debug.kill_after_steps`` steps (of all phases) done: stop as if the process had been killed."""
        k = self.cfg.debug.kill_after_steps if "debug" in self.cfg else 0
        return bool(k) and self.loop_steps >= k

    # -- set-up -----------------------------------------------------------------------------
    def setup(self) -> None:
        import jax

        import tooln1
        from tooln1.rollout.sampling import eos_ids_for
        from tooln1.sharding import make_mesh

        cfg = self.cfg
        path = cfg.model.path
        if cfg.model.tiny.enabled and (not path or not os.path.isfile(os.path.join(path, "config.json"))):
            from tooln1.checkpoints.tiny import make_random_checkpoint

            path = path or os.path.join(self.workdir, "tiny_model")
            if not os.path.isfile(os.path.join(path, "config.json")):
                t = cfg.model.tiny
                if self.process_index == 0:
                    make_random_checkpoint(path, layers=t.layers, hidden=t.hidden, heads=t.heads, kv_heads=t.kv_heads,
                                           intermediate=t.intermediate, seed=t.seed)
                if jax.process_count() > 1:  # the others load it next: wait until process 0 has written it
                    from jax.experimental import multihost_utils

                    multihost_utils.sync_global_devices("tooln1 tiny checkpoint written")
                self.say(f"made a tiny random checkpoint in {path}")
        self.model_path = path
        shape = {"data": cfg.mesh.data, "fsdp": cfg.mesh.fsdp, "tensor": cfg.mesh.tensor}
        devices = jax.devices()
        if -1 not in shape.values() and math.prod(shape.values()) < len(devices):
            devices = devices[: math.prod(shape.values())]  # a smaller mesh on the first devices
        self.mesh = make_mesh(shape, devices=devices)
        from tooln1.checkpoints.hf_layout import CheckpointError

        try:
            self.model = tooln1.load_model(path, dtype=cfg.model.dtype, mesh=self.mesh,
                                           compute_dtype=cfg.model.compute_dtype, remat=cfg.model.remat,
                                           remat_policy=cfg.model.remat_policy, attention=cfg.model.attention,
                                           scan_layers=cfg.model.scan_layers, frozen_layers=cfg.model.frozen_layers)
        except CheckpointError:
            raise
        except ValueError as e:  # a config.model option the checkpoint's shape rules out (e.g. frozen_layers)
            raise ConfigError(f"config.model does not fit {path}: {e}") from None
        if cfg.model.preset:
            self._check_preset(cfg.model.preset)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer or path)
        self.eos_ids = eos_ids_for(self.model, self.tokenizer)
        if not self.eos_ids:
            raise ConfigError(f"config.model.path={path!r}: no EOS token id in generation_config.json or the tokenizer")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.eos_text = self.tokenizer.convert_ids_to_tokens(self.eos_ids[0])
        self.train_records, self.val_records, self.data_stats = load_data(cfg, self.tokenizer, self.say)
        self.base_key = jax.random.key(cfg.seed)
        from tooln1.models import count_params

        self.say(f"model {path}: {count_params(self.model.config) / 1e6:.2f}M params, mesh {dict(self.mesh.shape)} "
                 f"on {len(jax.devices())} {jax.default_backend()} device(s); workdir {self.workdir}")

    def _check_preset(self, name: str) -> None:
        from tooln1.models import PRESETS

        want, got = PRESETS[name], self.model.config
        fields = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")
        diff = {f: (getattr(got, f), getattr(want, f)) for f in fields if getattr(got, f) != getattr(want, f)}
        if diff:
            self.say(f"warning: checkpoint {self.model_path} differs from preset {name!r}: "
                     + ", ".join(f"{k}={a} (preset {b})" for k, (a, b) in diff.items()))

    def _prompt_buckets(self) -> dict[str, Any]:
        """Padded prompt lengths: multiples of ``grpo.prompt_bucket`` (fewer compiled shapes), or the
        sampler's default powers of two when it is 0."""
        b = self.cfg.grpo.prompt_bucket
        if not b:
            return {}
        top = -(-self.cfg.data.max_prompt_tokens // b) * b
        return {"prompt_buckets": tuple(range(b, top + 1, b))}

    def sampling_config(self, rollout_slots: int, **knobs: Any) -> Any:
        """A `tooln1.rollout.sampling.SamplingConfig` for this model and tokenizer (EOS and pad ids, prompt
        buckets) on an engine of ``rollout_slots`` slots (0: the engine's default); ``knobs``: the rest."""
        from tooln1.rollout.engine import EngineConfig
        from tooln1.rollout.sampling import SamplingConfig

        return SamplingConfig(eos_ids=self.eos_ids, pad_id=self.pad_id, engine=EngineConfig(num_slots=rollout_slots),
                              **knobs, **self._prompt_buckets())

    # -- validation -------------------------------------------------------------------------
    def validate(self, model: Any, step: int, tag: str) -> float:
        """Greedy mean binary reward on the validation records (and diagnostics), logged under val/.

        Each process samples and scores a contiguous share of the records, padded with copies of the
        first record so that all processes make the same sampler calls; the means are over every
        process's real records."""
        import jax
        from jax.experimental import multihost_utils

        from tooln1.reward import score_batch
        from tooln1.rollout.sampling import sample

        cfg = self.cfg
        t0 = time.perf_counter()
        sampling = self.sampling_config(cfg.eval.rollout_slots, num_samples=1, max_new_tokens=cfg.eval.max_new_tokens,
                                        temperature=0.0)
        responses: list[str] = []
        share = -(-len(self.val_records) // jax.process_count())
        recs = self.val_records[self.process_index * share:(self.process_index + 1) * share]
        real = np.arange(share) < len(recs)
        recs = recs + [self.val_records[0]] * (share - len(recs))
        bs = cfg.eval.batch_size
        for start in range(0, len(recs), bs):
            ids, mask = prompt_batch(recs[start:start + bs], self.tokenizer, self.pad_id)
            out = sample(model, ids, mask, sampling, 0).local()  # greedy: the key is never drawn
            responses += self.decode(out.tokens, out.mask)
        answers = [r["answer"] for r in recs]
        rewards, diag = score_batch(responses, answers, "binary")
        sums = np.array([real.sum(), rewards[real].sum(), *(v[real].sum() for v in diag.values())], np.float32)
        if jax.process_count() > 1:
            sums = multihost_utils.process_allgather(sums).sum(0)
        acc = float(sums[1] / sums[0])
        scalars = {f"val/{k}": float(v / sums[0]) for k, v in zip(diag, sums[2:])}
        scalars["val/accuracy"] = acc
        scalars["val/seconds"] = time.perf_counter() - t0
        self.writer.write(step, scalars, phase=tag)
        if responses:
            self.writer.text("val/example", responses[0], step)
        self.say(f"validation ({tag}, step {step}): greedy mean binary reward {acc:.3f} on {len(self.val_records)} "
                 f"prompts (format {scalars['val/format_ok']:.2f}, json {scalars['val/json_ok']:.2f}, "
                 f"names {scalars['val/names_match']:.2f})")
        return acc

    def decode(self, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
        """Responses as text with special tokens kept (the trailing EOS dropped, as `generate` does)."""
        return decode_responses(self.tokenizer, tokens, mask, self.eos_ids)

    # -- checkpoint helpers -----------------------------------------------------------------
    def checkpointer(self, phase: str) -> Any:
        """The `tooln1.checkpoints.train_state.Checkpointer` of ``<workdir>/checkpoints/<phase>``."""
        from tooln1.checkpoints.train_state import Checkpointer

        c = self.cfg.checkpoint
        return Checkpointer(os.path.join(self.workdir, "checkpoints", phase), keep=c.keep, async_save=c.async_save)

    def _finished_step(self) -> int | None:
        """The last step of a finished run in the workdir (summary.json written and the final phase's
        checkpoint marked done, with no more steps configured), else None."""
        cfg = self.cfg
        phase = "grpo" if cfg.grpo.enabled else "sft"
        if not (cfg.checkpoint.resume and os.path.isfile(os.path.join(self.workdir, "summary.json"))
                and os.path.isdir(os.path.join(self.workdir, "checkpoints", phase))):
            return None
        ckpt = self.checkpointer(phase)
        try:
            meta = ckpt.restore_meta()
        finally:
            ckpt.close()
        if not meta or not meta.get("done") or int(meta["step"]) < cfg[phase].steps:
            return None
        return int(meta["step"])

    # -- SFT --------------------------------------------------------------------------------
    def _sft_pairs(self, records: Sequence[dict]) -> list[tuple[list[int], list[int]]]:
        """(prompt tokens, reply tokens) of each SFT example."""
        cfg = self.cfg.sft
        prompts = tokenize_prompts(records, self.tokenizer)
        replies = [sft_response(r, cfg.target, cfg.think_text, self.eos_text) for r in records]
        return list(zip(prompts, self.tokenizer(replies, add_special_tokens=False)["input_ids"]))

    def _sft_fitting(self, records: Sequence[dict]) -> np.ndarray:
        """Indices of the examples whose prompt + reply fit ``sft.max_seq_len``. The others are dropped
        (and counted), not truncated: cutting from the left would lose the system prompt and tools."""
        limit = self.cfg.sft.max_seq_len
        fits = np.asarray([len(p) + len(t) <= limit for p, t in self._sft_pairs(records)], bool)
        dropped = int((~fits).sum())
        self.data_stats["sft_too_long"] = dropped
        if dropped:
            self.say(f"SFT: dropped {dropped} of {len(records)} examples longer than config.sft.max_seq_len={limit}")
        if fits.sum() < self.cfg.sft.batch_size:
            raise ConfigError(f"config.sft.max_seq_len={limit}: only {int(fits.sum())} of {len(records)} examples fit, "
                              f"fewer than one batch of config.sft.batch_size={self.cfg.sft.batch_size}")
        return np.flatnonzero(fits)

    def _sft_examples(self, records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask, loss_mask)`` left-padded to ``sft.max_seq_len``; the loss mask
        marks the reply tokens."""
        length = self.cfg.sft.max_seq_len
        pairs = self._sft_pairs(records)
        ids, attn = left_pad([p + t for p, t in pairs], length, self.pad_id)
        loss_mask, _ = left_pad([[0] * len(p) + [1] * len(t) for p, t in pairs], length, 0)
        return ids, attn, loss_mask

    def run_sft(self, model: Any) -> tuple[Any, PhaseResult]:
        import jax

        from tooln1.data.iterator import BatchIterator, global_array
        from tooln1.training.metrics import peak_flops, sft_flops
        from tooln1.training.phase import Phase
        from tooln1.training.sft import SFTLoss
        from tooln1.training.updater import OptimizerConfig, Updater

        cfg = self.cfg.sft
        usable = self._sft_fitting(self.train_records)
        examples = [self.train_records[i] for i in usable]
        iterator = BatchIterator(len(usable), cfg.batch_size, seed=self.cfg.data.seed + 1)
        phase = Phase(self, "sft", iterator, cfg.steps or cfg.epochs * iterator.steps_per_epoch, cfg.loss_agg)
        updater = Updater(model, SFTLoss(loss_agg=cfg.loss_agg), OptimizerConfig.from_mapping(cfg.optimizer),
                          num_mini_batches=1, micro_batch_size=cfg.micro_batch_size or None)
        state, _ = phase.resume(updater.init(model))
        if phase.step >= phase.total:  # resumed from its last checkpoint: nothing left to do
            return updater.model(state), phase.finish()
        self.say(f"SFT: {phase.total} steps of {cfg.batch_size} examples ({cfg.target} target), "
                 f"lr {cfg.optimizer.learning_rate}, loss aggregation {cfg.loss_agg}")
        peak = peak_flops(self.cfg.log.peak_tflops)
        phase.start()
        while phase.running:
            t0 = time.perf_counter()
            ids, attn, lmask = self._sft_examples(phase.next_records(examples))
            batch = {"input_ids": global_array(ids, self.mesh), "attention_mask": global_array(attn, self.mesh),
                     "loss_mask": global_array(lmask, self.mesh)}
            state, metrics = updater.step(state, batch)
            metrics = jax.device_get(metrics)
            phase.advance()
            dt = time.perf_counter() - t0
            if metrics["skipped"] > 0:
                self.say(f"SFT step {phase.step}: non-finite loss or gradient (loss={float(metrics['loss'])}); "
                         "update skipped")
            scalars = {"sft/loss": metrics["loss"], "sft/nll": metrics["nll"], "sft/grad_norm": metrics["grad_norm"],
                       "sft/learning_rate": metrics.get("learning_rate", np.nan), "sft/skipped": metrics["skipped"],
                       "sft/tokens_per_s": float(attn.sum()) * iterator.process_count / dt,
                       "sft/step_seconds": dt,
                       "sft/mfu": sft_flops(model.config, ids.shape[0] * iterator.process_count, ids.shape[1]) / dt / peak}
            phase.log(scalars, {"loss": float(metrics["loss"]), "tok/s": scalars["sft/tokens_per_s"]})
            phase.checkpoint(state)
        return updater.model(state), phase.finish()

    def _post_sft_model(self, model: Any) -> Any:
        """The model after a finished SFT phase (for the GRPO reference after a resume)."""
        from tooln1.training.sft import SFTLoss
        from tooln1.training.updater import OptimizerConfig, Updater

        ckpt = self.checkpointer("sft")
        try:
            meta = ckpt.restore_meta()
            if meta is None or not meta.get("done"):
                return None
            updater = Updater(model, SFTLoss(), OptimizerConfig.from_mapping(self.cfg.sft.optimizer), donate=False)
            state, _ = ckpt.restore_latest(updater.init(model), self.say)
            return updater.model(state)
        finally:
            ckpt.close()

    # -- the whole run ----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.finished_at is not None:
            self.say(f"{self.workdir}: finished at step {self.finished_at}; use a new workdir or "
                     "--config.checkpoint.resume=false")
            with open(os.path.join(self.workdir, "summary.json"), encoding="utf-8") as f:
                return json.load(f)
        self.setup()
        summary: dict[str, Any] = {"workdir": self.workdir, "model_path": self.model_path,
                                   "loss_agg": {"sft": cfg.sft.loss_agg if cfg.sft.enabled else None,
                                                "grpo": cfg.grpo.loss_agg if cfg.grpo.enabled else None}}
        model = self.model
        grpo_started = False
        if cfg.grpo.enabled and cfg.checkpoint.resume:
            ck = self.checkpointer("grpo")
            grpo_started = ck.latest_step() is not None
            ck.close()
        if cfg.sft.enabled:
            if grpo_started:
                post = self._post_sft_model(model)
                if post is None:
                    raise RuntimeError(f"{self.workdir}: a GRPO checkpoint exists but no finished SFT checkpoint; "
                                       "cannot rebuild the GRPO reference policy")
                model = post
            else:
                model, sft_res = self.run_sft(model)
                summary["sft_steps"], summary["sft_seconds"] = sft_res.steps, sft_res.seconds
                if self.killed():
                    return self._finish(summary, killed=True)
                if not cfg.grpo.enabled:
                    summary["val_after_sft"] = self.validate(model, sft_res.steps, "after SFT")
        if cfg.grpo.enabled:
            from tooln1.training.grpo_loop import GRPOPhase

            model, res = GRPOPhase(self, model).run()
            summary["grpo_steps"], summary["grpo_seconds"] = res.steps, res.seconds
            summary["val_before_grpo"] = res.val_before
            if self.killed():
                return self._finish(summary, killed=True)
            summary["val_after_grpo"] = self.validate(model, res.steps, "after GRPO")
        if cfg.export.enabled:
            out = cfg.export.dir or os.path.join(self.workdir, "hf_export")
            model.save_pretrained(out)
            if self.process_index == 0 and not os.path.isfile(os.path.join(out, "tokenizer_config.json")):
                self.tokenizer.save_pretrained(out)
            summary["export_dir"] = out
            self.say(f"exported the policy as an HF checkpoint to {out}")
        self.final_model = model
        summary["data"] = self.data_stats
        return self._finish(summary)

    def _finish(self, summary: dict[str, Any], killed: bool = False) -> dict[str, Any]:
        summary["killed"] = killed
        summary["wall_seconds"] = time.perf_counter() - self.t_start
        self.writer.close()
        if not killed and self.process_index == 0:
            with open(os.path.join(self.workdir, "summary.json"), "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=2, sort_keys=True)
            self._plot_curves()
            if summary.get("val_before_grpo") is not None:
                self.say(f"validation reward before GRPO: {summary['val_before_grpo']:.3f}  after GRPO: "
                         f"{summary['val_after_grpo']:.3f}  ({summary['wall_seconds']:.0f} s in all)")
        return summary

    def _plot_curves(self) -> None:
        """``<workdir>/curves.png`` from metrics.jsonl; one line instead when matplotlib is missing."""
        try:
            from tooln1.training.metrics import plot_curves

            plot_curves(os.path.join(self.workdir, "metrics.jsonl"), os.path.join(self.workdir, "curves.png"))
        except ImportError:
            self.say("matplotlib is not installed: no curves.png (pip install matplotlib)")
            return
        self.say(f"training curves in {os.path.join(self.workdir, 'curves.png')}")


def train(cfg: Any) -> dict[str, Any]:
    """Run a config (an ml-collections ConfigDict); returns the summary (also in <workdir>/summary.json)."""
    return Trainer(cfg).run()
