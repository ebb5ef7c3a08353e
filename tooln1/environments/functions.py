"""An episode over plain Python functions: the model calls them until it answers or calls a final tool.

The smallest complete tool-use environment, and the one to start from when adding a task
(docs/environments.md): give it the opening messages, the tool schemas, a function per tool and
a score for the reply that calls a final tool. Calls are read from the reply's first
``<tool_call>`` block (:func:`tooln1.eval.parsing.classify_response`) and run one after the other
under :class:`~tooln1.environments.execution.ToolLimits`; whatever a function does (raise, hang,
return a megabyte) becomes one capped ``<tool_response>`` text.

The episode ends when a reply calls a tool in ``final_tools`` (after running it), when a reply
makes no call, or after ``max_steps`` replies. Its reward is ``score(final reply)`` when a final
tool was called, else 0.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

from tooln1.environments.base import Step, tool_responses
from tooln1.environments.execution import ToolLimits, ToolTimeout, cap, run_with_timeout
from tooln1.eval.parsing import CALLS, classify_response

__all__ = ["FunctionEnvironment", "call_function"]


def call_function(functions: Mapping[str, Callable[..., Any]], call: dict, limits: ToolLimits) -> str:
    """One call ``{name, arguments}`` run with ``limits``: its result as text (strings as they are,
    anything else as JSON), or an error text naming what went wrong; always capped."""
    name, arguments = call["name"], call["arguments"]
    function = functions.get(name)
    if function is None:
        return f"Error: no tool named {name!r}; available: {sorted(functions)}"
    try:
        value = run_with_timeout(lambda: function(**arguments), limits.timeout_s)
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    except ToolTimeout as err:
        text = f"Error: {name} {err}"
    except Exception as err:  # noqa: BLE001 - a failing tool is an observation, not a crash
        text = f"Error: {name} raised {type(err).__name__}: {err}"
    return cap(text, limits.max_chars)


class FunctionEnvironment:
    """See the module doc."""

    def __init__(self, messages: Sequence[dict], tools: Sequence[dict], functions: Mapping[str, Callable[..., Any]],
                 final_tools: Sequence[str], score: Callable[[str], float], limits: ToolLimits | None = None,
                 max_steps: int = 4):
        missing = sorted({t["name"] for t in tools} - set(functions))
        if missing:
            raise ValueError(f"FunctionEnvironment: tools {missing} have a schema but no function")
        if max_steps < 1:
            raise ValueError(f"FunctionEnvironment: max_steps={max_steps} must be >= 1")
        self._messages = [dict(m) for m in messages]
        self._tools = [dict(t) for t in tools]
        self._functions = dict(functions)
        self._final = set(final_tools)
        self._score = score
        self._limits = limits or ToolLimits()
        self._max_steps = max_steps
        self._steps = 0
        self._reward = 0.0
        self._done = False

    def tools(self) -> list[dict]:
        return [dict(t) for t in self._tools]

    def messages(self) -> list[dict]:
        return [dict(m) for m in self._messages]

    @property
    def done(self) -> bool:
        return self._done

    def step(self, response: str) -> Step:
        if self._done:
            raise RuntimeError("FunctionEnvironment: step() after the episode ended")
        self._steps += 1
        self._messages.append({"role": "assistant", "content": response})
        parsed = classify_response(response)
        if parsed.kind != CALLS or not parsed.calls:
            self._done = True
            return Step("", True, 0.0)
        results = [call_function(self._functions, call, self._limits) for call in parsed.calls]
        self._messages.extend({"role": "tool", "content": text} for text in results)
        if any(call["name"] in self._final for call in parsed.calls):
            self._done = True
            self._reward = self._score(response)
            return Step("", True, self._reward)
        if self._steps >= self._max_steps:
            self._done = True
            return Step("", True, 0.0)
        return Step(tool_responses(results), False)

    def reward(self) -> float:
        return self._reward
