"""tooln1-eval's command line: --help, and what happens when a benchmark's data is absent.

Each test runs from an empty working directory, so the default ../shared/data is absent as on a
fresh clone; BFCL is available when nvidia-bfcl is installed.
"""
import json
import subprocess
import sys

import pytest

from tooln1.eval import bfcl, runner
from tooln1.eval.cli import build_parser, main


@pytest.fixture
def fresh_clone(tmp_path, monkeypatch):
    """An empty working directory: no ../shared/data next to it."""
    work = tmp_path / "clone"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def no_bfcl(monkeypatch):
    def missing():
        raise bfcl.MissingBFCLError(f"no module named 'bfcl'; {bfcl.INSTALL_HINT}")

    monkeypatch.setattr(bfcl, "require_checker", missing)


def test_help_lists_every_flag_with_its_default():
    done = subprocess.run([sys.executable, "-m", "tooln1.eval.cli", "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps help lines
    for default in ("--batch-size N prompts generated together (default: 16)",
                    "--max-new-tokens N generation budget per response (default: 1024)",
                    "--output DIR output folder (default: eval_results)",
                    "--benchmarks LIST comma list of bfcl,apibank,acebench (default: bfcl,apibank,acebench",
                    "--data-dir DIR folder holding apibank/ and acebench/ (default: ../shared/data"):
        assert default in text
    for action in build_parser()._actions:
        if action.dest != "help":
            assert action.option_strings[0] in text
            assert "default" in action.help or "required" in action.help, action.option_strings
    assert len(done.stdout.splitlines()) < 80  # the tool's own flags, nothing else


def test_defaults_on_a_fresh_clone_skip_absent_data_and_run_bfcl(fresh_clone, capsys, bfcl_checker):
    out = fresh_clone / "out"
    assert main(["--model", "oracle", "--limit", "2", "--output", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err  # one line per skipped benchmark
    assert err[0].startswith("tooln1-eval: skipping API-Bank:") and "github.com/MadeAgents/Hammer" in err[0]
    assert err[1].startswith("tooln1-eval: skipping ACEBench:") and "github.com/ACEBench/ACEBench" in err[1]
    assert all("--data-dir DIR" in line for line in err)
    assert f"no folder {fresh_clone.parent / 'shared' / 'data' / 'apibank'};" in err[0]
    data = json.loads((out / "results.json").read_text())
    assert set(data["categories"]) == {"bfcl"} and len(data["categories"]["bfcl"]) == len(bfcl.CATEGORIES)


def test_model_run_with_defaults_gets_the_available_benchmarks(fresh_clone, tiny_checkpoint, monkeypatch, capsys,
                                                              bfcl_checker):
    seen = {}

    def fake_evaluate(model, tokenizer, **kwargs):
        seen.update(kwargs)
        return {"model": "tiny", "categories": {}, "summary": {}}

    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    assert main(["--model", tiny_checkpoint, "--output", str(fresh_clone / "out"), "--compile-cache", ""]) == 0
    assert seen["benchmarks"] == ["bfcl"]
    assert "skipping API-Bank" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--benchmarks", "apibank"], ["--categories", "level-1"],
                                   ["--benchmarks", "bfcl,apibank"]])
def test_named_benchmark_without_data_is_an_error_naming_the_path(fresh_clone, capsys, flags):
    assert main(["--model", "oracle", "--output", str(fresh_clone / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tooln1-eval: error: API-Bank data missing:")
    assert str(fresh_clone.parent / "shared" / "data" / "apibank") in err
    assert not (fresh_clone / "out").exists()


def test_data_dir_is_where_missing_files_are_looked_for(fresh_clone, capsys, no_bfcl):
    assert main(["--model", "oracle", "--data-dir", str(fresh_clone / "mine"), "--benchmarks", "acebench"]) == 2
    assert f"no folder {fresh_clone / 'mine' / 'acebench'};" in capsys.readouterr().err
    (fresh_clone / "mine" / "acebench").mkdir(parents=True)  # a folder without the category's files
    assert main(["--model", "oracle", "--data-dir", str(fresh_clone / "mine"), "--categories", "atom_bool"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tooln1-eval: error: ACEBench data missing:")
    assert str(fresh_clone / "mine" / "acebench" / "data_normal_atom_bool.json") in err
    assert "data_normal_atom_enum.json" not in err  # only the requested category's files


def test_no_available_benchmark_is_one_clear_error(fresh_clone, capsys, no_bfcl):
    assert main(["--model", "oracle", "--output", str(fresh_clone / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tooln1-eval: error: no benchmark data found, nothing to evaluate:")
    assert "skipping" not in err
    assert bfcl.INSTALL_HINT in err and "MadeAgents/Hammer" in err and "ACEBench/ACEBench" in err
    assert not (fresh_clone / "out").exists()


def test_data_dir_runs_apibank_and_acebench(fresh_clone, capsys, no_bfcl, shared_data):
    out = fresh_clone / "out"
    assert main(["--model", "oracle", "--data-dir", str(shared_data), "--limit", "1", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    skipped = ("tooln1-eval: skipping BFCL: the nvidia-bfcl package (BFCL data and checker) is not installed; "
               + bfcl.INSTALL_HINT)
    assert captured.err.strip().splitlines() == [skipped]
    data = json.loads((out / "results.json").read_text())
    assert set(data["categories"]) == {"apibank", "acebench"}
    assert "| Unparseable |" in captured.out
