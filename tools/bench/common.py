"""What the benchmarks in this folder share: their parser, random checkpoints cached between runs, and each
measured side in a process of its own, so its peak memory is its own and no two sides compete for the cores.

Imports nothing heavy: a script may need to set up the allocator or XLA before JAX or torch load.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
from typing import Any

CACHE = os.path.join(tempfile.gettempdir(), "tooln1_bench")


def parser(doc: str, child: bool = False) -> argparse.ArgumentParser:
    """A script's parser with its docstring as the help; ``child``: it runs sides with `run_child`, which
    passes the hidden ``--result`` flag."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if child:
        ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return ap


def checkpoint(directory: str | None = None, mean_response: int = 0, **spec: Any) -> str:
    """A random HF checkpoint, ``make_tiny_checkpoint(**spec)``, written once under ``directory`` (default: a
    cache in the temp dir) and reused; its name hashes the spec, so a changed spec never reads a stale one.

    ``mean_response``: every ``mean_response``-th token id is also an EOS id in its generation config, which
    every side reads; on a near-uniform model (``init_std=0.002``) a step then ends a response with
    probability ~1/mean_response, so response lengths are geometric with that mean."""
    directory = directory or CACHE
    key = json.dumps(dict(spec, mean_response=mean_response), sort_keys=True)
    path = os.path.join(directory, f"{spec.get('shape', 'custom')}-{hashlib.sha1(key.encode()).hexdigest()[:10]}")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    from tooln1.checkpoints.tiny import make_tiny_checkpoint

    os.makedirs(directory, exist_ok=True)
    partial = tempfile.mkdtemp(dir=directory, prefix=".partial-")
    make_tiny_checkpoint(partial, **spec)
    if mean_response:
        with open(os.path.join(partial, "config.json")) as f:
            vocab = json.load(f)["vocab_size"]
        gen_path = os.path.join(partial, "generation_config.json")
        with open(gen_path) as f:
            gen = json.load(f)
        eos = gen["eos_token_id"]
        gen["eos_token_id"] = sorted({*([eos] if isinstance(eos, int) else eos), *range(0, vocab, mean_response)})
        with open(gen_path, "w") as f:
            json.dump(gen, f, indent=2)
    os.replace(partial, path)  # whole or not at all: an interrupted write is never reused
    return path


def run_child(argv: list[str], env: dict[str, str] | None = None, python: str | None = None) -> dict:
    """``python *argv --result PATH`` in a fresh process (``python``: another environment's interpreter),
    its stderr echoed as it comes: the dict the child gave `write_result`, or ``{"error": the last stderr
    line naming an error, else the last line}``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        proc = subprocess.Popen([python or sys.executable, *argv, "--result", path], stderr=subprocess.PIPE,
                                text=True, env=env)
        last = error = ""
        for line in proc.stderr:
            sys.stderr.write(line)
            last = line.strip() or last
            if "Error: " in line:  # a root cause, rather than the shutdown warnings that may follow it
                error = line.strip()
        if proc.wait() == 0 and os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    return {"error": (error or last)[-200:] or f"exit status {proc.returncode}"}


def response_tokens(rows: list[list[int]], eos: list[int]) -> int:
    """Tokens of sampled rows up to and with each one's first EOS id: what every side counts."""
    stop, n = set(eos), 0
    for row in rows:
        for t in row:
            n += 1
            if t in stop:
                break
    return n


def write_result(path: str, result: dict) -> None:
    """The child's half of `run_child`: ``result`` with the process's peak host memory, ``peak_rss_mb``."""
    with open(path, "w") as f:
        json.dump(dict(result, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), f)
