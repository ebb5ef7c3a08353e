"""BFCL v3 multi-turn as an environment: BFCL's eight API classes, its data, its checkers.

Everything task-specific comes from the ``nvidia-bfcl`` package (``pip install --no-deps
nvidia-bfcl``): the API classes (GorillaFileSystem, MathAPI, MessageAPI, TwitterAPI, TicketAPI,
TradingBot, TravelAPI, VehicleControlAPI), their function docs, the entries and ground truth of
``BFCL_v3_multi_turn_{base,miss_func,miss_param,long_context,composite}.json``, and the
``state_checker`` / ``response_checker`` that decide each turn.

How an episode runs, as BFCL's prompting runner does (``BaseHandler.inference_multi_turn_prompting``):

- The API instances are made per environment from the entry's ``initial_config`` (BFCL's runner
  keeps them in module globals keyed by model and entry, so two rollouts of one entry would share
  them; here each environment owns its own, and so does its ground-truth replay).
- User turns come in order. A reply with calls (the project's ``<tool_call>`` JSON, read like the
  single-turn evaluation reads it, :func:`tooln1.eval.parsing.classify_response`) is executed and
  answered with the tool results; a reply without a call (text, ``[]`` or unparseable) ends the
  turn and the next user turn is the observation. More than 20 steps in a turn force-terminate
  the episode (BFCL's ``MAXIMUM_STEP_LIMIT``), which fails it.
- ``miss_func`` (and ``composite``) entries hold functions back; at the listed turn, whose question
  is empty, the user turn announces them (their schemas in a ``<tools>`` block, then BFCL's
  "I have updated some more functions you can choose from. What about now?"), and ``tools()``
  includes them from then on. ``miss_param`` turns simply have no ground-truth calls.
- When a turn ends, its ground-truth calls run on the ground-truth instances and BFCL's
  ``multi_turn_checker`` rule is applied to that turn: a turn with ground truth needs at least one
  call, then ``state_checker`` (instances' public attributes equal) and ``response_checker`` (the
  ground truth's results are among every result the model got so far). ``Step.reward`` is that
  turn's 1/0; the episode's reward is 1 only when every turn passes and, with ``require_think``,
  every reply holds ``<think>…</think>`` (the paper's format rule).

Model output is never evaluated as Python: a call is dispatched to the method of that name with
its JSON arguments. Results are turned into text as BFCL's ``execute_multi_turn_func_call`` does
(strings as they are, dicts as JSON, errors as ``Error during execution: …``), so the response
checker compares the same strings. Ground-truth call strings are trusted data, parsed with
``ast`` (a few ``composite`` ones are not valid Python; they run as BFCL runs them: as an error).
"""
from __future__ import annotations

import ast
import copy
import functools
import importlib
import inspect
import json
import random
from pathlib import Path
from typing import Any, Callable, Iterable

from tooln1.data.prompt import system_prompt
from tooln1.environments.base import Step, has_think, tool_responses
from tooln1.environments.execution import ToolLimits, ToolTimeout, cap, run_with_timeout
from tooln1.eval.bfcl import data_dir, prepare_functions
from tooln1.eval.parsing import CALLS, classify_response

__all__ = ["CATEGORIES", "DEFAULT_CATEGORIES", "SPLIT_SEED", "EVAL_FRACTION", "split_indices", "load_records",
           "BFCLEnvironment", "parse_call", "call_string"]

CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context",
              "multi_turn_composite")
DEFAULT_CATEGORIES = CATEGORIES[:4]
"""BFCL v3's multi-turn score averages these four; ``composite`` is kept out of it, as BFCL does."""

MAX_STEPS_PER_TURN = 20  # BFCL's MAXIMUM_STEP_LIMIT: more steps in one turn force-terminate the entry
ADDED_FUNCTIONS_PROMPT = "I have updated some more functions you can choose from. What about now?"

SPLIT_SEED = 0
EVAL_FRACTION = 0.5
"""The train/eval split of BFCL multi-turn: see :func:`split_indices`."""

_FUNC_DOC_FILES = {
    "GorillaFileSystem": "gorilla_file_system.json", "MathAPI": "math_api.json",
    "MessageAPI": "message_api.json", "TwitterAPI": "posting_api.json", "TicketAPI": "ticket_api.json",
    "TradingBot": "trading_bot.json", "TravelAPI": "travel_booking.json",
    "VehicleControlAPI": "vehicle_control.json",
}


# ------------------------------------------------------------------------------------ the data

def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _index(entry_id: str) -> int:
    return int(entry_id.rsplit("_", 1)[1])


def split_indices(split: str, seed: int = SPLIT_SEED, eval_fraction: float = EVAL_FRACTION,
                  num_indices: int = 200) -> set[int]:
    """Entry indices (0–199) of ``split``: ``"eval"``, ``"train"`` or ``"all"``.

    The five categories are variants of the same 200 scenarios (``multi_turn_base_57`` and
    ``multi_turn_miss_param_57`` share their state and most questions), so the split is drawn over
    indices, not ids: an index is on one side for every category. A seeded shuffle of the indices;
    the first ``eval_fraction`` are held out for evaluation, the rest train.
    """
    if split == "all":
        return set(range(num_indices))
    if split not in ("train", "eval"):
        raise ValueError(f"BFCL multi-turn split {split!r}: expected 'train', 'eval' or 'all'")
    order = list(range(num_indices))
    random.Random(seed).shuffle(order)
    held_out = set(order[: round(eval_fraction * num_indices)])
    return held_out if split == "eval" else set(order) - held_out


def describe_split(split: str, seed: int = SPLIT_SEED, eval_fraction: float = EVAL_FRACTION) -> str:
    """One line saying which entries a number covers, printed beside every multi-turn result."""
    if split == "all":
        return "all 200 entries per category (train and eval splits together)"
    n = len(split_indices(split, seed, eval_fraction))
    return (f"{split} split: {n} of 200 entry indices per category (seed {seed}, eval fraction {eval_fraction}; "
            f"train and eval disjoint)")


def load_records(categories: Iterable[str] | None = None, split: str = "eval", seed: int = SPLIT_SEED,
                 limit: int | None = None) -> list[dict]:
    """BFCL multi-turn records of ``categories`` (default :data:`DEFAULT_CATEGORIES`) in ``split``.

    A record is ``{id, env: "bfcl_multi_turn", source, category, entry, ground_truth, tools,
    conversation}``; ``entry`` is BFCL's test entry, ``ground_truth`` its call strings per turn.
    ``tools`` and ``conversation`` (the first question) are the environment's opening prompt in the
    unified record's fields, so code that renders a record's prompt without an environment (the
    trainer's length filter) sees the prompt the episode starts from. ``limit``: the first N of
    each category (by index) after the split.
    """
    categories = list(categories or DEFAULT_CATEGORIES)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown BFCL multi-turn categories {unknown}; choose from {list(CATEGORIES)}")
    keep = split_indices(split, seed)
    root = data_dir()
    records = []
    for category in categories:
        entries = _read_jsonl(root / f"BFCL_v3_{category}.json")
        truth = {row["id"]: row["ground_truth"] for row in _read_jsonl(root / "possible_answer" /
                                                                      f"BFCL_v3_{category}.json")}
        chosen = sorted((e for e in entries if _index(e["id"]) in keep), key=lambda e: _index(e["id"]))
        for entry in chosen[:limit] if limit is not None else chosen:
            records.append({"id": entry["id"], "env": "bfcl_multi_turn", "source": f"bfcl/{category}",
                            "category": category, "entry": entry, "ground_truth": truth[entry["id"]],
                            "tools": _offered_tools(entry)[0],
                            "conversation": [{"role": "user", "content": _question_text(entry, 0)}]})
    return records


@functools.cache
def _function_docs(class_name: str) -> tuple[dict, ...]:
    """One class's function docs as BFCL's prompting handler shows them (read once; never mutated)."""
    docs = _read_jsonl(data_dir() / "multi_turn_func_doc" / _FUNC_DOC_FILES[class_name])
    return tuple(prepare_functions(docs, "multi_turn"))


def _offered_tools(entry: dict) -> tuple[list[dict], dict[int, list[dict]]]:
    """The function docs shown from the first turn, and those ``miss_func`` / ``composite`` hold back
    until the turn that announces them (turn → docs)."""
    missed = {int(turn): set(names) for turn, names in entry.get("missed_function", {}).items()}
    docs = [doc for name in entry["involved_classes"] for doc in _function_docs(name)]
    held_back = set().union(*missed.values()) if missed else set()
    return ([d for d in docs if d["name"] not in held_back],
            {turn: [d for d in docs if d["name"] in names] for turn, names in missed.items()})


def _question_text(entry: dict, turn: int) -> str:
    """The user's text of ``turn`` (a turn announcing held-back functions has none of its own)."""
    return "\n\n".join(m["content"] for m in entry["question"][turn])


def _make_instances(entry: dict, long_context: bool) -> dict[str, Any]:
    """Fresh API instances of ``entry``, initialised as BFCL's ``execute_multi_turn_func_call`` does."""
    from bfcl.eval_checker.multi_turn_eval.multi_turn_utils import CLASS_FILE_PATH_MAPPING, STATELESS_CLASSES

    instances = {}
    for name in entry["involved_classes"]:
        instance = getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[name]), name)()
        if name not in STATELESS_CLASSES:
            instance._load_scenario(copy.deepcopy(entry["initial_config"].get(name, {})), long_context=long_context)
        instances[name] = instance
    return instances


# ------------------------------------------------------------------------------------- calls

def call_string(name: str, arguments: dict) -> str:
    """BFCL's call string for a JSON call (``convert_to_function_call``): ``f(a='x',b=2)``."""
    return f"{name}({','.join(f'{k}={v!r}' for k, v in arguments.items())})"


def parse_call(text: str) -> tuple[str, list, dict]:
    """``(name, positional values, keyword values)`` of a ground-truth call string such as
    ``sort('a.txt')``; raises ``SyntaxError`` (not valid Python, as ``eval`` would) or ``ValueError``."""
    node = ast.parse(text, filename="<string>", mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a plain function call: {text[:80]!r}")
    args = [ast.literal_eval(a) for a in node.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    return node.func.id, args, kwargs


def _as_text(value: Any) -> str:
    """A method's return value as BFCL's executor writes it into the conversation."""
    if type(value) is str:
        return value
    if type(value) is dict:
        try:
            return json.dumps(value)
        except Exception:  # noqa: BLE001 - BFCL's fallback for values JSON cannot hold
            return str(value)
    return str(value)


class _Executor:
    """Public methods of one set of API instances, called by name with limits."""

    def __init__(self, instances: dict[str, Any], limits: ToolLimits):
        self.instances = instances
        self.limits = limits
        self.methods: dict[str, Callable] = {}
        for instance in instances.values():  # later classes win a shared name, as in BFCL's mapping
            for name, method in inspect.getmembers(instance, predicate=inspect.ismethod):
                if not name.startswith("_"):
                    self.methods[name] = method
        self.timed_out = False

    def call(self, name: str, args: list, kwargs: dict) -> str:
        method = self.methods.get(name)
        if method is None:
            return f"Error during execution: name '{name}' is not defined"
        try:
            return _as_text(run_with_timeout(lambda: method(*args, **kwargs), self.limits.timeout_s))
        except ToolTimeout as err:
            self.timed_out = True
            return f"Error during execution: {name} {err}"
        except Exception as err:  # noqa: BLE001 - BFCL reports any failure of a call as its result
            return f"Error during execution: {err}"

    def call_text(self, text: str) -> str:
        """A ground-truth call string, run as BFCL runs it (a string that does not parse is an error)."""
        try:
            name, args, kwargs = parse_call(text)
        except (SyntaxError, ValueError) as err:
            return f"Error during execution: {err}"
        return self.call(name, args, kwargs)

    def keywords(self, text: str) -> dict | None:
        """A ground-truth call string as a JSON call ``{name, arguments}`` that runs the same way:
        positional values take their parameter's name; keywords stay as written, even ones the
        method lacks (the call then fails here as it fails in BFCL). None when the string does
        not parse or its positional values cannot be named."""
        try:
            name, args, kwargs = parse_call(text)
        except (SyntaxError, ValueError):
            return None
        if args:
            method = self.methods.get(name)
            names = list(inspect.signature(method).parameters) if method else []
            if len(args) > len(names):
                return None
            kwargs = {**dict(zip(names, args)), **kwargs}
        return {"name": name, "arguments": kwargs}


# ------------------------------------------------------------------------------- environment

class BFCLEnvironment:
    """One rollout of one BFCL multi-turn entry (see the module doc)."""

    def __init__(self, entry: dict, ground_truth: list[list[str]], limits: ToolLimits | None = None,
                 require_think: bool = True):
        if len(entry["question"]) != len(ground_truth):
            raise ValueError(f"BFCL entry {entry['id']!r}: {len(entry['question'])} turns but "
                             f"{len(ground_truth)} ground-truth turns")
        self.id = entry["id"]
        self._entry = entry
        self._truth = ground_truth
        self._require_think = require_think
        limits = limits or ToolLimits()
        category = self.id.rsplit("_", 1)[0]
        long_context = "long_context" in category or "composite" in category
        self._model = _Executor(_make_instances(entry, long_context), limits)
        self._reference = _Executor(_make_instances(entry, long_context), ToolLimits(None, limits.max_chars))
        self._tools, self._added = _offered_tools(entry)
        self._turn = 0
        self._steps: list[list[str]] = []  # this turn's executed steps, as BFCL call strings
        self._calls: list[list[list[str]]] = []  # every finished turn's steps
        self._results: list[str] = []  # every result the model got, all turns (the response checker's pool)
        self._verdicts: list[dict] = []
        self._format_ok = True
        self._done = False
        self._messages = [{"role": "system", "content": system_prompt(self._tools)},
                          {"role": "user", "content": self._question(0)}]

    @classmethod
    def from_record(cls, record: dict, limits: ToolLimits | None = None, require_think: bool = True) -> BFCLEnvironment:
        return cls(record["entry"], record["ground_truth"], limits, require_think)

    # -- the interface
    def tools(self) -> list[dict]:
        return list(self._tools)  # the schemas are shared by every environment: read them, do not change them

    def messages(self) -> list[dict]:
        return [dict(m) for m in self._messages]

    def step(self, response: str) -> Step:
        if self._done:
            raise RuntimeError(f"BFCL entry {self.id!r}: step() after the episode ended")
        self._messages.append({"role": "assistant", "content": response})
        self._format_ok = self._format_ok and has_think(response)
        parsed = classify_response(response)
        if parsed.kind == CALLS and parsed.calls:
            return self._execute(parsed.calls)
        return self._end_turn()

    def reward(self) -> float:
        if not self._done or len(self._verdicts) != len(self._truth):
            return 0.0
        passed = all(v["valid"] for v in self._verdicts)
        return 1.0 if passed and (self._format_ok or not self._require_think) else 0.0

    # -- what reports and the oracle read
    @property
    def done(self) -> bool:
        return self._done

    @property
    def num_turns(self) -> int:
        return len(self._truth)

    def verdicts(self) -> list[dict]:
        """Per finished turn: ``{"valid", "error_type", "error_message"}`` (BFCL's error types)."""
        return [dict(v) for v in self._verdicts]

    def decoded_calls(self) -> list[list[list[str]]]:
        """The executed calls as BFCL's checker takes them: per turn, per step, call strings."""
        return [[list(s) for s in turn] for turn in self._calls]

    def ground_truth_calls(self, turn: int) -> list[dict | None]:
        """Turn ``turn``'s ground truth as JSON calls (None for a call string that does not parse)."""
        return [self._reference.keywords(text) for text in self._truth[turn]]

    @property
    def format_ok(self) -> bool:
        return self._format_ok

    # -- internals
    def _question(self, turn: int) -> str:
        """User turn ``turn``'s text; a turn that announces held-back functions adds them to tools()."""
        if turn in self._added:
            added = self._added[turn]
            self._tools.extend(added)
            lines = "\n".join(json.dumps({"type": "function", "function": d}) for d in added)
            return f"<tools>\n{lines}\n</tools>\n{ADDED_FUNCTIONS_PROMPT}"
        return _question_text(self._entry, turn)

    def _execute(self, calls: list[dict]) -> Step:
        results = [self._model.call(c["name"], [], c["arguments"]) for c in calls]
        self._steps.append([call_string(c["name"], c["arguments"]) for c in calls])
        self._results.extend(results)
        self._messages.extend({"role": "tool", "content": cap(r, self._model.limits.max_chars)} for r in results)
        if len(self._steps) > MAX_STEPS_PER_TURN:
            self._verdicts.append({"valid": False, "error_type": "multi_turn:force_terminated",
                                   "error_message": f"more than {MAX_STEPS_PER_TURN} steps in turn {self._turn}"})
            self._done = True
            return Step("", True, 0.0)
        return Step(tool_responses([m["content"] for m in self._messages[-len(results):]]), False)

    def _end_turn(self) -> Step:
        verdict = self._check_turn()
        self._verdicts.append(verdict)
        self._calls.append(self._steps)
        self._steps = []
        self._turn += 1
        reward = 1.0 if verdict["valid"] else 0.0
        if self._turn == len(self._truth):
            self._done = True
            return Step("", True, reward)
        question = self._question(self._turn)
        self._messages.append({"role": "user", "content": question})
        return Step(question, False, reward)

    def _check_turn(self) -> dict:
        """BFCL's ``multi_turn_checker`` for the turn that just ended."""
        from bfcl.eval_checker.multi_turn_eval.multi_turn_checker import response_checker, state_checker

        truth = self._truth[self._turn]
        truth_results = [self._reference.call_text(text) for text in truth]
        if not truth:  # BFCL checks nothing on a turn whose right answer is no call
            return {"valid": True, "error_type": "", "error_message": ""}
        if not self._steps:
            return {"valid": False, "error_type": "multi_turn:empty_turn_model_response",
                    "error_message": f"Model response list is empty for turn {self._turn}"}
        for check in (lambda: state_checker(self._model.instances, self._reference.instances),
                      lambda: response_checker(self._results, truth_results, self._turn)):
            result = check()
            if not result["valid"]:
                return {"valid": False, "error_type": result["error_type"], "error_message": result["error_message"]}
        if self._model.timed_out:
            return {"valid": False, "error_type": "tooln1:tool_timeout",
                    "error_message": "a call timed out; the state it left cannot be trusted"}
        return {"valid": True, "error_type": "", "error_message": ""}
