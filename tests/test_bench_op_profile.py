"""tools/bench/op_profile.py attributes each executed op to its program and named scope."""
from __future__ import annotations

import gzip
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "bench"))

import op_profile  # noqa: E402

# An optimized-HLO dump in XLA's text form: a fusion with its own metadata, one whose metadata is only on
# its fused computation's root, and a dot with none (XLA dropped it) whose operand has some.
HLO = """HloModule jit_run_round

%fused_computation.1 (param_0: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  ROOT %exp.1 = f32[8]{0} exponential(%param_0), metadata={op_name="jit(run_round)/while/body/attend/exp"}
}

ENTRY %main.9 (p: f32[8], w: f32[8,8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  %w = f32[8,8]{1,0} parameter(1)
  %mlp_fusion = f32[8]{0} fusion(%p), calls=%fused_computation.1, metadata={op_name="jit(run_round)/mlp/mul"}
  %exp_fusion = f32[8]{0} fusion(%mlp_fusion), kind=kLoop, calls=%fused_computation.1
  %dot.3 = f32[8]{0} dot(%exp_fusion, %w), lhs_contracting_dims={0}, rhs_contracting_dims={0}
  ROOT %write = f32[8]{0} add(%dot.3, %p), metadata={op_name="jit(run_round)/while/body/attend/kv_write/add"}
}
"""


def _event(op: str, start_us: float, dur_us: float, module: str = "jit_run_round") -> dict:
    return {"ph": "X", "name": op, "ts": start_us, "dur": dur_us, "tid": 1,
            "args": {"hlo_module": module, "hlo_op": op}}


def test_ops_are_attributed_to_their_scopes_and_runs(tmp_path):
    dump = tmp_path / "xla"
    dump.mkdir()
    (dump / "module_0001.jit_run_round.cpu_after_optimizations.txt").write_text(HLO)
    scopes = op_profile.op_scopes(str(dump))
    assert scopes[("jit_run_round", "mlp_fusion")] == "mlp"
    assert scopes[("jit_run_round", "exp_fusion")] == "attend"  # from its computation's root
    assert scopes[("jit_run_round", "dot.3")] == "attend"  # from its operand
    assert scopes[("jit_run_round", "write")] == "kv_write"  # the innermost scope

    # two runs of the program 1 s apart (the gap between them is not its time), a while op (a container:
    # its ops count, not it) and an op no scope names
    events = [_event("mlp_fusion", 0, 100), _event("exp_fusion", 100, 50), _event("while.7", 0, 400),
              _event("dot.3", 150, 250), _event("mlp_fusion", 1e6, 100), _event("unknown.1", 1e6 + 100, 20)]
    trace = tmp_path / "trace" / "plugins" / "profile" / "run"
    trace.mkdir(parents=True)
    with gzip.open(trace / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    got = op_profile.attribute(str(tmp_path / "trace"), scopes)["jit_run_round"]
    assert abs(got["mlp"] - 200e-6) < 1e-9
    assert abs(got["attend"] - 300e-6) < 1e-9
    assert abs(got["other"] - 20e-6) < 1e-9
    assert abs(got["wall"] - 520e-6) < 1e-9  # 400 us + 120 us, not the second between the runs

    # op by op: mlp_fusion's two runs are one kind, and the while op is not counted
    tails = op_profile.op_scopes(str(dump), op_profile.tail)
    assert tails[("jit_run_round", "exp_fusion")] == "attend/exp"
    top = op_profile.busiest(str(tmp_path / "trace"), scopes, tails, 2)["jit_run_round"]
    assert [(scope, op, runs) for scope, op, runs, _ in top] == [("attend", "dot attend/exp", 1),
                                                                  ("mlp", "mlp_fusion mlp/mul", 2)]
    assert abs(top[0][3] - 250e-6) < 1e-9 and abs(top[1][3] - 200e-6) < 1e-9


def test_table_gives_each_scope_its_share():
    rows = op_profile.table({"jit_run_round": {"wall": 2.0, "mlp": 1.5, "attend": 0.5},
                             "jit_stage": {"wall": 0.001, "other": 0.001}}).split("\n")
    assert len(rows) == 3  # header, rule, and run_round: programs under 10 ms of ops are left out
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    assert cells[:3] == ["run_round", "2.00", "2.00"]
    assert cells[3 + op_profile.SCOPES.index("mlp")] == "1.50 (75%)"
    assert cells[3 + op_profile.SCOPES.index("attend")] == "0.50 (25%)"


def test_the_engines_programs_carry_the_scopes(tiny_checkpoint, tmp_path):
    """The model and the engine name their parts, and they reach the compiled ops the tool reads: without
    the named scopes every op would count as "other"."""
    import tooln1
    from tooln1.rollout.engine import Engine, EngineConfig
    from tooln1.rollout.sampling import SamplingConfig

    engine = Engine(tooln1.load_model(tiny_checkpoint), EngineConfig(num_slots=2))
    sampling = SamplingConfig(num_samples=2, max_new_tokens=8, eos_ids=(1,))
    for program, module in (("round", "jit_run_round"), ("prefill", "jit_run_prefill")):
        text = engine.lower(sampling, 2, 16, program=program).compile().as_text()
        (tmp_path / f"module_0001.{module}.cpu_after_optimizations.txt").write_text(text)
    scopes = op_profile.op_scopes(str(tmp_path))
    found = {m: {s for (mod, _), s in scopes.items() if mod == m} for m in ("jit_run_round", "jit_run_prefill")}
    assert {"qkv", "attend", "attention_out", "mlp", "logits", "sample"} <= found["jit_run_round"], found
    assert {"qkv", "attend", "attention_out", "mlp"} <= found["jit_run_prefill"], found
