#!/usr/bin/env python
"""One full GRPO iteration (sample + score + update): tooln1 (JAX) against TRL's GRPOTrainer (PyTorch).

Both sides get the same random-weight HF checkpoint (``tooln1.checkpoints.tiny.make_tiny_checkpoint``), the
same prompts (token ids identical on both sides), the same G, prompt length, number of new tokens,
sampling (temperature, top_p 1, top_k off), beta (k3 KL coef), epsilon (clip), loss aggregation
(global token-mean: ours ``token-mean``, TRL ``loss_type="dapo"``), optimizer (AdamW lr 1e-6, betas
(0.9, 0.999), eps 1e-8, weight decay 0.01, grad-norm clip 1.0, constant lr), one optimizer step per
iteration, fp32 params and compute, no gradient checkpointing/remat, and the same binary reward
(``tooln1.reward``). Responses have a fixed length on both sides (ours ``ignore_eos``, TRL
``min_new_tokens = max_new_tokens``), so both generate and train on exactly the same number of tokens.

``--mean-response M`` is the long-tail mode instead: the checkpoint is initialised near-uniform
(init_std 0.002) and ``vocab / M`` token ids, spread over the vocabulary, are EOS ids in its
``generation_config.json`` (which TRL reads too), so each side's response lengths are geometric with
mean ~M, capped at ``--new-tokens``. Each side then does what it does by default with ragged
responses (ours: continuous batching, and the update trimmed to the longest response's bucket as
the trainer's ``grpo.trim_responses``; TRL: ``generate`` to the longest, the update padded to the
longest), and both report the response tokens they generated.

Each side runs in its own subprocess (one at a time, so they never compete for the cores or the
memory); the first iteration is a warm-up (JAX compile, torch allocator) and is excluded from the
per-iteration figure. Our compiles are timed apart and left out of every figure (``jax.monitoring``'s
trace, lowering and compile durations): a later iteration whose packed length falls in a new bucket
compiles its update, which the trainer pays once per bucket, not per step.

Allocator: ours runs as ``tooln1-train`` does on a CPU, glibc keeping freed memory for reuse
(``tooln1.platform.host_memory``; ``--ours-malloc default`` for glibc's own settings), TRL with glibc's own
(``--trl-malloc keep``: at the 0.5B shape its heap grew past this machine's 24 GB and it was killed).
Like ``--threads``, a comma list runs a side once per setting and its fastest counts.

    python tools/bench/grpo.py                                    # tiny shape, both sides
    python tools/bench/grpo.py --shape qwen2.5-0.5b --prompts 2 --group 4 --prompt-len 32 --new-tokens 32 --iters 2
    python tools/bench/grpo.py --side ours --json /tmp/ours.json  # one side only
    python tools/bench/grpo.py --prompt-len 512 --new-tokens 400 --mean-response 120  # long tail

Our FLOP/s figure is for the update step (``Updater.step``: forward + backward + AdamW of one
optimizer step over the whole batch) using the analytic model FLOPs (below) and XLA's own count,
against a large fp32 matmul measured with JAX on the same machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import common

ANSWER = [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]
WORDS = ("weather city paris tool call function arguments please find the current temperature in "
         "what is flight book hotel price stock search query user assistant json name value list of "
         "numbers compute sum order pizza send email calendar event tomorrow morning").split()


# --------------------------------------------------------------------------------------------
# shared set-up


def make_prompts(tokenizer, num_prompts: int, length: int, seed: int = 0) -> tuple[list[str], list[list[int]]]:
    """``num_prompts`` texts whose tokenization is exactly ``length`` ids (and round-trips)."""
    import random

    rng = random.Random(seed)
    texts, ids = [], []
    while len(texts) < num_prompts:
        words = " ".join(rng.choice(WORDS) for _ in range(length * 2))
        tok = tokenizer(words, add_special_tokens=False)["input_ids"][:length]
        text = tokenizer.decode(tok)
        if len(tok) == length and tokenizer(text, add_special_tokens=False)["input_ids"] == tok:
            texts.append(text)
            ids.append(tok)
    return texts, ids


def eos_ids(ckpt: str, tokenizer) -> list[int]:
    """The EOS ids both sides stop at: the generation config's, plus the tokenizer's (as TRL adds it)."""
    with open(os.path.join(ckpt, "generation_config.json")) as f:
        eos = json.load(f)["eos_token_id"]
    eos = [eos] if isinstance(eos, int) else list(eos)
    return eos if tokenizer.eos_token_id in eos else [tokenizer.eos_token_id, *eos]


# --------------------------------------------------------------------------------------------
# our side


def run_ours(args) -> dict:
    import jax
    import jax.monitoring
    import numpy as np
    from flax import nnx
    from transformers import AutoTokenizer

    import tooln1
    from tooln1.grpo import GRPOLoss, compute_advantages
    from tooln1.models.flops import update_flops
    from tooln1.reward import score_batch
    from tooln1.rollout.engine import Engine
    from tooln1.rollout.sampling import SamplingConfig, sample
    from tooln1.training.batch import update_batch
    from tooln1.training.updater import OptimizerConfig, ReferencePolicy, Updater

    tok = AutoTokenizer.from_pretrained(args.ckpt)
    _, prompt_ids = make_prompts(tok, args.prompts, args.prompt_len)
    prompt_ids = np.asarray(prompt_ids, np.int32)
    prompt_mask = np.ones_like(prompt_ids)
    answers = [json.dumps(ANSWER)] * (args.prompts * args.group)

    model = tooln1.load_model(args.ckpt, dtype="float32", compute_dtype=args.dtype, remat=False)
    eos = tuple(eos_ids(args.ckpt, tok)) if args.mean_response else (tok.convert_tokens_to_ids("<|im_end|>"),)
    sampling = SamplingConfig(num_samples=args.group, max_new_tokens=args.new_tokens, temperature=args.temperature,
                              top_p=1.0, top_k=0, pad_id=tok.pad_token_id, ignore_eos=not args.mean_response,
                              eos_ids=eos)
    # One optimizer step per generation: old log-probs = current ones (as TRL), no recompute.
    # Each group's prompt is scored once (packed with its G responses) unless --no-share-prompt.
    loss = GRPOLoss(clip_eps=args.epsilon, kl_coef=args.beta, loss_agg="token-mean", temperature=args.temperature,
                    on_policy=True, rows_per_prompt=1 if args.no_share_prompt else args.group)
    updater = Updater(model, loss, OptimizerConfig(), num_mini_batches=1)
    reference = ReferencePolicy(nnx.state(model, nnx.Param), offload_to_host=False)
    state = updater.init(model)

    compiling = [0.0]  # seconds spent tracing, lowering and compiling so far

    def on_duration(event, duration, **_):
        if event.startswith("/jax/core/compile/"):
            compiling[0] += duration

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    rows = []
    flops_xla = None
    for it in range(args.iters + 1):
        c0 = compiling[0]
        t0 = time.perf_counter()
        current = updater.model(state)
        engine = Engine(current, sampling.engine)  # what `sample` makes, kept for its counts (the roofline)
        out = sample(current, prompt_ids, prompt_mask, sampling, jax.random.key(it), engine=engine)
        tokens = np.asarray(out.tokens)
        t1, c1 = time.perf_counter(), compiling[0]
        texts = tok.batch_decode(tokens, skip_special_tokens=False)
        rewards, _ = score_batch(texts, answers, kind="binary")
        adv = compute_advantages(rewards, args.group)
        t2, c2 = time.perf_counter(), compiling[0]
        # as the trainer: train on the longest response's bucket, each group's responses packed back to back
        batch, packed = update_batch(out, adv, loss.rows_per_prompt)
        r_len = batch["response_ids"].shape[1]
        step_loss = dataclasses.replace(loss, packed_length=packed)
        batch["ref_logprobs"] = updater.compute_logprobs(reference.params(), batch, loss_fn=step_loss)
        jax.block_until_ready(batch["ref_logprobs"])
        t3, c3 = time.perf_counter(), compiling[0]
        if it == 0:  # XLA's FLOP count of the update step (its compile is not timed)
            try:
                req = {k: batch[k] for k in loss.required_keys}
                cost = updater._step.lower(state, updater.rest, req, step_loss).compile().cost_analysis()
                cost = cost[0] if isinstance(cost, (list, tuple)) else cost
                flops_xla = float(cost.get("flops", 0.0)) or None
            except Exception as e:  # cost analysis is best effort
                print(f"[ours] XLA cost analysis unavailable: {e}", file=sys.stderr)
        t3b, c3b = time.perf_counter(), compiling[0]
        state, metrics = updater.step(state, batch, step_loss)
        metrics = jax.device_get(metrics)
        t4, c4 = time.perf_counter(), compiling[0]
        n_tok = int(np.asarray(out.mask).sum())
        sample_s, score_s = (t1 - t0) - (c1 - c0), (t2 - t1) - (c2 - c1)
        logprobs_s, step_s = (t3 - t2) - (c3 - c2), (t4 - t3b) - (c4 - c3b)
        rows.append(dict(total=sample_s + score_s + logprobs_s + step_s, sample=sample_s, score=score_s,
                         logprobs=logprobs_s, step=step_s, compile=(c3 - c0) + (c4 - c3b), tokens=n_tok,
                         trained_len=r_len, packed_len=packed, loss=float(metrics["loss"])))
        print(f"[ours] iter {it}: " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in rows[-1].items()), file=sys.stderr, flush=True)
    # FLOPs at the last iteration's lengths (every iteration's in the fixed-length mode)
    model_flops = update_flops(model.config, args.prompts * args.group, args.prompt_len, rows[-1]["trained_len"],
                               old_logprobs=False, reference=False, rows_per_prompt=loss.rows_per_prompt,
                               packed_length=rows[-1]["packed_len"])
    roofline = _roofline(args, model.config, engine.stats, rows, loss.rows_per_prompt)
    return dict(side="ours", rows=rows, flops_xla_step=flops_xla, model_flops_step=model_flops, roofline=roofline)


def _roofline(args, config, sample_stats: dict, rows: list[dict], rows_per_prompt: int) -> dict | None:
    """The steady iterations' sample, log-prob and update seconds against their roofline (the last iteration's
    work) on the GPU or TPU this runs on, or on ``--roofline-target``'s peaks; None on a CPU without one."""
    import jax
    import jax.numpy as jnp

    from tooln1.preflight import roofline, targets

    target = (targets.get_target(args.roofline_target) if args.roofline_target
              else targets.target_of_devices(jax.devices()))
    if target is None or not target.peak_flops:
        return None
    item, layout, g = jnp.dtype(args.dtype).itemsize, roofline.Layout(), rows_per_prompt
    seq = args.prompt_len + ((rows[-1]["packed_len"] or g * rows[-1]["trained_len"]) if g > 1
                             else rows[-1]["trained_len"])
    n = args.prompts * args.group // g
    work = roofline.rollout_work(config, sample_stats, layout, item)
    costs = {"sample": work["prefill"] + work["decode"], "logprobs": roofline.logprobs(config, n, seq, 1, layout, item),
             "step": roofline.update(config, n, seq, 1, 1, layout, item)}
    steady = rows[1:] or rows
    measured = {k: _median([x[k] for x in steady]) for k in costs}
    return dict(target=target.name, parts=roofline.against_measured(measured, costs, target.peak_flops,
                                                                    target.hbm_bandwidth))


# --------------------------------------------------------------------------------------------
# TRL side


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tooln1.reward import score_batch

    torch.manual_seed(0)
    torch.set_num_threads(int(args.threads))
    tok = AutoTokenizer.from_pretrained(args.ckpt)
    texts, _ = make_prompts(tok, args.prompts, args.prompt_len)
    ds = Dataset.from_list([{"prompt": t, "answer": json.dumps(ANSWER)} for t in texts])

    def tool_reward(prompts, completions, answer, **_):
        rewards, _ = score_batch(list(completions), list(answer), kind="binary")
        return [float(x) for x in rewards]

    class Timer(TrainerCallback):
        """Per iteration: the total, and a split timed around TRL's own methods: ``_generate``
        (sample), ``_calculate_rewards`` (score), no-grad ``_get_per_token_logps_and_entropies``
        (reference log-probs) and the rest (update: forward + backward + optimizer + bookkeeping)."""

        def __init__(self):
            self.rows, self.t0, self.parts = [], None, {}

        def wrap(self, obj, method: str, part: str, only_without_grad: bool = False):
            inner = getattr(obj, method)

            def timed(*a, **k):
                if only_without_grad and torch.is_grad_enabled():
                    return inner(*a, **k)
                t = time.perf_counter()
                try:
                    return inner(*a, **k)
                finally:
                    self.parts[part] = self.parts.get(part, 0.0) + time.perf_counter() - t

            setattr(obj, method, timed)

        def count_tokens(self, obj, method: str):
            inner = getattr(obj, method)

            def counted(*a, **k):
                out = inner(*a, **k)
                self.tokens += sum(len(c) for c in out[0])  # completion ids, cut after the first EOS
                self.longest = max([self.longest, *(len(c) for c in out[0])])
                return out

            setattr(obj, method, counted)

        def on_step_begin(self, *a, **k):
            self.t0, self.parts, self.tokens, self.longest = time.perf_counter(), {}, 0, 0

        def on_step_end(self, *a, **k):
            row = dict(total=time.perf_counter() - self.t0)
            row.update({p: self.parts.get(p, 0.0) for p in ("sample", "score", "logprobs")})
            row["step"] = row["total"] - row["sample"] - row["score"] - row["logprobs"]
            row["tokens"], row["trained_len"] = self.tokens, self.longest
            self.rows.append(row)
            print(f"[trl] iter {len(self.rows) - 1}: " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                             for k, v in row.items()),
                  file=sys.stderr, flush=True)

    n = args.prompts * args.group
    cfg = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_bench_"),
        per_device_train_batch_size=n, gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        num_generations=args.group, max_completion_length=args.new_tokens,
        generation_kwargs={} if args.mean_response else {"min_new_tokens": args.new_tokens},
        temperature=args.temperature, top_p=1.0, top_k=0,
        beta=args.beta, epsilon=args.epsilon, loss_type="dapo", scale_rewards="group",
        mask_truncated_completions=False,
        learning_rate=1e-6, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.01,
        max_grad_norm=1.0, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        max_steps=args.iters + 1, gradient_checkpointing=False, bf16=args.dtype == "bfloat16", fp16=False, use_cpu=True,
        report_to="none", logging_steps=10**6, save_strategy="no", disable_tqdm=True, shuffle_dataset=False,
        dataloader_num_workers=0, seed=0, log_completions=False,
        model_init_kwargs={"dtype": torch.float32},
    )
    timer = Timer()
    trainer = GRPOTrainer(model=args.ckpt, reward_funcs=[tool_reward], args=cfg, train_dataset=ds,
                          processing_class=tok, callbacks=[timer])
    timer.wrap(trainer, "_generate", "sample")
    timer.count_tokens(trainer, "_generate_single_turn")
    timer.wrap(trainer, "_calculate_rewards", "score")
    timer.wrap(trainer, "_get_per_token_logps_and_entropies", "logprobs", only_without_grad=True)
    trainer.train()
    return dict(side="trl", rows=timer.rows, torch_threads=torch.get_num_threads(),
                trl_version=__import__("trl").__version__, torch_version=torch.__version__)


# --------------------------------------------------------------------------------------------
# driver


def _median(xs):
    import numpy as np

    return float(np.median(xs))


def summarise(args, ourses: list[dict], trls: list[dict]) -> dict:
    """Per side: every thread setting's steady-state median s/iter; the fastest setting counts."""
    res = dict(shape=args.shape, prompts=args.prompts, group=args.group, prompt_len=args.prompt_len,
               share_prompt=not args.no_share_prompt, ld_preload=os.environ.get("LD_PRELOAD", ""),
               new_tokens=args.new_tokens, mean_response=args.mean_response, iters=args.iters, beta=args.beta,
               epsilon=args.epsilon, dtype=args.dtype,
               temperature=args.temperature, loadavg_start=args.loadavg_start, loadavg_end=os.getloadavg())
    if ourses:
        runs = []
        for o in ourses:
            steady = o["rows"][1:]
            r = dict(threads=o["threads"], s_per_iter=_median([x["total"] for x in steady]),
                     split_s={k: _median([x[k] for x in steady]) for k in ("sample", "score", "logprobs", "step")},
                     iter_s=[x["total"] for x in o["rows"]], matmul_flops=o["matmul_flops"],
                     response_tokens=[x["tokens"] for x in o["rows"]],
                     trained_len=[x["trained_len"] for x in o["rows"]])
            r["compile_s"] = sum(x["compile"] for x in o["rows"])
            r["malloc"], r["peak_rss_gb"] = o["malloc"], o["peak_rss_gb"]
            if o.get("roofline"):
                r["roofline"] = o["roofline"]
            r["step_flops_per_s"] = o["model_flops_step"] / r["split_s"]["step"]
            r["step_frac_of_matmul"] = r["step_flops_per_s"] / o["matmul_flops"]
            if o.get("flops_xla_step"):
                r["step_xla_flops_per_s"] = o["flops_xla_step"] / r["split_s"]["step"]
            runs.append(r)
        res["ours_runs"] = runs
        best = min(runs, key=lambda r: r["s_per_iter"])
        res["ours_s_per_iter"], res["ours_best_threads"] = best["s_per_iter"], best["threads"]
        res["ours_compile_s"] = best["compile_s"]
        res["model_flops_step"], res["xla_flops_step"] = ourses[0]["model_flops_step"], ourses[0].get("flops_xla_step")
        res["matmul_flops_best"] = max(r["matmul_flops"] for r in runs)
        res["ours_step_flops_per_s"] = best["step_flops_per_s"]
        res["ours_step_frac_of_best_matmul"] = best["step_flops_per_s"] / res["matmul_flops_best"]
    if trls:
        res["trl_runs"] = [dict(threads=t["threads"], malloc=t["malloc"], peak_rss_gb=t["peak_rss_gb"],
                                torch_threads=t["torch_threads"],
                                s_per_iter=_median([x["total"] for x in t["rows"][1:]]),
                                split_s={k: _median([x[k] for x in t["rows"][1:]])
                                         for k in ("sample", "score", "logprobs", "step")},
                                iter_s=[x["total"] for x in t["rows"]],
                                response_tokens=[x["tokens"] for x in t["rows"]],
                                trained_len=[x["trained_len"] for x in t["rows"]]) for t in trls]
        best = min(res["trl_runs"], key=lambda r: r["s_per_iter"])
        res["trl_s_per_iter"], res["trl_best_threads"] = best["s_per_iter"], best["threads"]
        res["trl_version"], res["torch_version"] = trls[0]["trl_version"], trls[0]["torch_version"]
    if ourses and trls:
        res["speedup"] = res["trl_s_per_iter"] / res["ours_s_per_iter"]
    return res


def main(argv=None):
    ap = common.parser(__doc__, child=True)
    ap.add_argument("--shape", default="tiny", help="tiny | qwen2.5-0.5b | ... (tooln1.checkpoints.tiny.SHAPES)")
    ap.add_argument("--ckpt", default=None, help="an HF checkpoint dir (default: a random one of --shape, cached)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--iters", type=int, default=3, help="timed iterations after the warm-up one")
    ap.add_argument("--mean-response", type=int, default=0,
                    help="long-tail mode: response lengths geometric with this mean, capped at --new-tokens "
                         "(0: every response exactly --new-tokens long)")
    ap.add_argument("--beta", type=float, default=1e-3)
    ap.add_argument("--epsilon", type=float, default=0.2)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--side", choices=["both", "ours", "trl"], default="both")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="compute dtype of both sides (parameters and Adam stay float32): bfloat16 is "
                         "TRL's bf16=True autocast and our compute_dtype")
    ap.add_argument("--no-share-prompt", action="store_true",
                    help="ours: score every row's prompt separately (GRPOLoss.rows_per_prompt=1) "
                         "instead of once per group")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--threads", default="1,2",
                    help="comma list of thread settings; each side runs once per setting and its fastest counts. "
                         "1: torch.set_num_threads(1) / XLA with --xla_cpu_multi_thread_eigen=false; N>1: "
                         "torch.set_num_threads(N) / XLA's default pool. (On a loaded 2-core machine a 2-thread "
                         "pool can be several times slower than 1 thread, for torch more than for XLA.)")
    for side, default in (("ours", "keep"), ("trl", "default")):
        ap.add_argument(f"--{side}-malloc", default=default,
                        help=f"comma list of host allocator settings for {side}, one run each, the fastest counts: "
                             "keep (glibc keeps freed memory, tooln1.platform.host_memory) or default (glibc's own)")
    ap.add_argument("--_malloc", default="default", help=argparse.SUPPRESS)
    ap.add_argument("--roofline-target", default=None,
                    help="a tooln1-fit target (e.g. h100-80gb:1) whose peaks ours' sample, log-prob pass and update "
                         "are measured against (default: the GPU or TPU it runs on; none on a CPU)")
    ap.add_argument("--json", default=None, help="write the summary here")
    args = ap.parse_args(argv)

    if args.result:  # one side in this process; raw rows to the result file
        if args._malloc == "keep":
            from tooln1.platform.host_memory import keep_freed_memory

            keep_freed_memory()  # before torch or JAX start threads
        if args.side == "ours":
            from tooln1.training.metrics import measure_matmul_tflops

            res = run_ours(args)
            res["matmul_flops"] = measure_matmul_tflops(args.matmul_n, repeats=10) * 1e12
        else:
            res = run_trl(args)
        common.write_result(args.result, res)
        return res

    if args.roofline_target:
        from tooln1.preflight.targets import TargetError, get_target

        try:
            get_target(args.roofline_target)
        except TargetError as e:
            ap.error(f"--roofline-target: {e}")
    args.loadavg_start = os.getloadavg()
    args.ckpt = args.ckpt or common.checkpoint(mean_response=args.mean_response, shape=args.shape, seed=0,
                                               **({"init_std": 0.002} if args.mean_response else {}))
    runs = []
    mallocs = {side: [m.strip() for m in getattr(args, f"{side}_malloc").split(",") if m.strip()]
               for side in ("ours", "trl")}
    for side, settings in mallocs.items():
        if not settings or not set(settings) <= {"keep", "default"}:
            ap.error(f"--{side}-malloc: expected keep and/or default, got {getattr(args, f'{side}_malloc')!r}")
    for t in [t.strip() for t in args.threads.split(",") if t.strip()]:
        runs += [(side, t, m) for side in ("ours", "trl") if args.side in ("both", side) for m in mallocs[side]]
    ourses, trls = [], []
    for side, threads, malloc in runs:
        cmd = [__file__, "--side", side, "--ckpt", args.ckpt, "--threads", threads, "--_malloc", malloc,
               "--dtype", args.dtype, *["--no-share-prompt"] * args.no_share_prompt]
        for flag in ("shape", "prompts", "group", "prompt_len", "new_tokens", "iters", "mean_response", "beta",
                     "epsilon", "temperature", "matmul_n"):
            cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
        if args.roofline_target:
            cmd += ["--roofline-target", args.roofline_target]
        env = dict(os.environ)
        if side == "ours" and threads == "1":
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
        t0 = time.perf_counter()
        raw = common.run_child(cmd, env)
        if "error" in raw:
            raise SystemExit(f"{side} (threads={threads}, malloc={malloc}) failed: {raw['error']}")
        raw["threads"], raw["malloc"], raw["peak_rss_gb"] = int(threads), malloc, raw.pop("peak_rss_mb") / 1024
        (ourses if side == "ours" else trls).append(raw)
        print(f"[{side} threads={threads} malloc={malloc}] process wall time {time.perf_counter() - t0:.1f} s, "
              f"peak RSS {raw['peak_rss_gb']:.1f} GB, load average {os.getloadavg()}", file=sys.stderr, flush=True)
    res = summarise(args, ourses, trls)
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
