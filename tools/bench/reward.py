#!/usr/bin/env python
"""Time the reward on adversarial 1 MB responses (docs/design.md §7: huge input must stay cheap).

    python tools/bench/reward.py

Prints the best-of-3 milliseconds per ``compute_reward`` call (averaged over the reward kinds) for
each input. ``tests/test_reward.py`` checks the same inputs by counting the characters the reward
JSON-decodes instead of timing them.
"""
from __future__ import annotations

import argparse
import json
import time

from tooln1.reward import KINDS, compute_reward

ANSWER = [
    {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}},
    {"name": "convert", "arguments": {"amount": 2.5, "to": "EUR"}},
]

ADVERSARIAL_1MB = {
    "unclosed_opens": "<tool_call>" * 95_000,
    "open_close_pairs": "<tool_call>[</tool_call>" * 42_000,
    "deep_list": "<think></think><tool_call>" + "[" * 1_000_000 + "</tool_call>",
    "deep_dict": "<tool_call>" + '{"a":' * 200_000 + "</tool_call>",
    "huge_int": "<tool_call>" + "9" * 1_000_000 + "</tool_call>",
    "backslashes": '<tool_call>"' + "\\\\" * 500_000 + '"</tool_call>',
    "many_calls": "<think></think><tool_call>[" + '{"name": "f", "arguments": {"x": [1, {"y": null}]}},' * 20_000
                  + '{"name": "f", "arguments": {}}]</tool_call>',
    "long_think": "<think>" + "word " * 200_000 + "</think><tool_call>" + json.dumps(ANSWER) + "</tool_call>",
    "markers": "<|im_start|>assistant" * 48_000,
    "think_soup": "<think></think><tool_call>" * 40_000,
}


def main() -> None:
    # not common.parser: tests/test_reward.py loads this file by path, where common does not import
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for name, text in ADVERSARIAL_1MB.items():
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for k in KINDS:
                compute_reward(text, ANSWER, k)
            best = min(best, (time.perf_counter() - t0) / len(KINDS))
        print(f"{name:<18}{len(text):>10} chars {best * 1e3:8.2f} ms per call")


if __name__ == "__main__":
    main()
