#!/usr/bin/env python
"""The vLLM side of ``rollout.py``: run by the interpreter of vLLM's own environment, not ours.

vLLM pins torch and much else that tooln1 does not share, so it lives in a virtualenv of its own
(``rollout.py``'s docstring has the commands) and this script imports nothing from tooln1: the parent
passes the workload as token ids in a JSON request, and this side answers through ``common.write_result``
like every other side. One warm-up request compiles and fills vLLM's caches; the timed call is one
``LLM.generate`` over every prompt with ``n`` = G, as an RL framework's rollout calls it. A second call
over the same prompts stops after each sample's first token: its wall, ``prefill_s``, is vLLM's prefill,
set beside the engine's prefill rounds (the rest of the timed call is its decode).

    $VLLM_PYTHON tools/bench/vllm_side.py --request REQUEST.json --result RESULT.json
"""
from __future__ import annotations

import argparse
import json
import time

import common


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--request", required=True, help="JSON: ckpt, prompts, eos, group, cap, temperature, "
                    "ignore_eos, dtype")
    ap.add_argument("--result", required=True)
    args = ap.parse_args()
    with open(args.request) as f:
        req = json.load(f)

    import vllm
    from vllm.inputs import TokensPrompt

    longest = max(map(len, req["prompts"])) + req["cap"]
    llm = vllm.LLM(model=req["ckpt"], dtype=req["dtype"], seed=0, max_model_len=longest,
                   max_num_seqs=req.get("max_num_seqs", 256), enable_prefix_caching=True)

    def params(cap: int) -> vllm.SamplingParams:  # unfiltered sampling (no top-k/top-p), as the other sides
        return vllm.SamplingParams(n=req["group"], temperature=req["temperature"], top_p=1.0, max_tokens=cap,
                                   min_tokens=cap if req["ignore_eos"] else 0, ignore_eos=req["ignore_eos"],
                                   stop_token_ids=req["eos"] or None, detokenize=False)

    prompts = [TokensPrompt(prompt_token_ids=p) for p in req["prompts"]]
    t0 = time.perf_counter()
    llm.generate(prompts[:1], params(4), use_tqdm=False)  # warm-up
    first = time.perf_counter() - t0
    llm.reset_prefix_cache()  # the timed run prefills its prompts as the other sides do
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params(req["cap"]), use_tqdm=False)
    wall = time.perf_counter() - t0
    rows = [list(c.token_ids) for o in outputs for c in o.outputs]
    tokens = common.response_tokens(rows, req["eos"])
    llm.reset_prefix_cache()
    t0 = time.perf_counter()
    first_tokens = llm.generate(prompts, params(1), use_tqdm=False)
    prefill = time.perf_counter() - t0
    cached = sum(o.num_cached_tokens or 0 for o in first_tokens)
    longest_response = max(common.response_tokens([row], req["eos"]) for row in rows)
    common.write_result(args.result, dict(system="vLLM", wall_s=wall, tokens=tokens, tok_s=tokens / wall,
                                          stats=dict(device="cpu", vllm=vllm.__version__, first_run_s=first,
                                                     prefill_s=prefill, cached_tokens=cached,
                                                     longest=longest_response)))


if __name__ == "__main__":
    main()
