"""BFCL multi-turn as a benchmark: the seeded train/eval split and tooln1-eval's oracle run."""
import json

from tooln1.environments.bfcl import CATEGORIES, load_records, split_indices
from tooln1.eval.cli import main


def test_split_is_seeded_disjoint_and_shared_by_the_categories(bfcl_checker):
    train, held_out = split_indices("train"), split_indices("eval")
    assert not train & held_out and train | held_out == set(range(200)) and len(held_out) == 100
    assert split_indices("eval") == held_out and split_indices("eval", seed=1) != held_out
    records = load_records(CATEGORIES, split="eval")
    assert len(records) == 500
    by_category = {}
    for r in records:  # an index is on the same side for every category: variants of one scenario
        by_category.setdefault(r["category"], set()).add(int(r["id"].rsplit("_", 1)[1]))
    assert all(indices == held_out for indices in by_category.values())


def test_oracle_run_writes_the_multi_turn_table_with_its_split(tmp_path, capsys, bfcl_checker):
    out = tmp_path / "out"
    assert main(["--model", "oracle", "--benchmarks", "bfcl-multi-turn", "--limit", "3", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["categories"]) == ["bfcl-multi-turn"]
    per_category = results["categories"]["bfcl-multi-turn"]
    assert sorted(per_category) == sorted(CATEGORIES[:4])
    assert all(c["correct_count"] == c["total_count"] == 3 for c in per_category.values())
    assert results["summary"]["bfcl-multi-turn"]["overall"]["accuracy"] == 1.0
    table = (out / "table.md").read_text()
    assert "| MT Overall |" in table and "MT Composite" not in table and "NL Simple" not in table
    assert "- oracle: eval split: 100 of 200 entry indices per category (seed 0" in table
    assert "eval split: 100 of 200" in capsys.readouterr().out


def test_a_checkpoint_plays_its_episodes_through_the_engine(tmp_path, tiny_checkpoint, bfcl_checker):
    out = tmp_path / "eval"
    assert main(["--model", tiny_checkpoint, "--benchmarks", "bfcl-multi-turn", "--categories", "multi_turn_base",
                 "--limit", "2", "--max-turns", "2", "--max-new-tokens", "8", "--max-trajectory-tokens", "64",
                 "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["categories"]["bfcl-multi-turn"]["multi_turn_base"]["total_count"] == 2
    rows = [s for s in results["samples"] if s["benchmark"] == "bfcl-multi-turn"]
    assert len(rows) == 2 and all(row["outputs"][0] for row in rows)  # a random model's replies, scored by BFCL
    assert "| MT Base |" in (out / "table.md").read_text()


def test_training_spec_reads_the_training_split_with_the_environments_opening_prompt(bfcl_checker, tiny_tokenizer):
    """``bfcl-multi-turn:SPLIT[:CATEGORY]`` (data.sources) gives one side of the split, and each record's
    unified fields render the very prompt its environment starts the episode from (what the length
    filter counts)."""
    from tooln1.data.prompt import render_prompt
    from tooln1.data.sources import load_records_with_stats
    from tooln1.environments import make_environment

    records, stats = load_records_with_stats("bfcl-multi-turn:train")
    assert len(records) == stats.kept_trajectories == 400
    assert {int(r["id"].rsplit("_", 1)[1]) for r in records} == split_indices("train")
    one, _ = load_records_with_stats("bfcl-multi-turn:eval:multi_turn_composite")
    assert len(one) == 100 and {r["category"] for r in one} == {"multi_turn_composite"}
    for record in records[::7] + one[::7]:  # every category, miss_func and composite holding functions back
        env = make_environment(record)
        opening = tiny_tokenizer.apply_chat_template(env.messages(), tokenize=False, add_generation_prompt=True)
        assert render_prompt(record, tiny_tokenizer) == opening


def test_a_bad_training_spec_is_named_by_the_config_check():
    from tooln1.config.schema import DataSection
    from tooln1.config.validation import data_problems

    def problems(spec: str) -> list[str]:
        return data_problems(DataSection(sources=spec, val_spec="bfcl-multi-turn:eval"), check_paths=True)

    assert problems("bfcl-multi-turn:train,bfcl-multi-turn:all:multi_turn_base") == []
    assert "SPLIT train, eval or all" in problems("bfcl-multi-turn:test")[0]
    assert "bfcl-multi-turn:train:multi_turn_x" in problems("bfcl-multi-turn:train:multi_turn_x")[0]
