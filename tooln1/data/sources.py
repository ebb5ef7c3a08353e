"""xLAM, ToolACE and synthetic rows → unified records, with a count for every dropped row.

Rows are read through ``datasets`` (a hub id, or a local JSON/JSONL/parquet file or folder). A
malformed row never stops a load: it is dropped and counted under a reason, and the counts give
the paper's Table 1 (raw vs kept, single vs multi turn). Row-level reasons count raw rows;
``unknown_tool`` counts examples (one ToolACE row yields one example per tool-call step).

Deliberate deviation from the authors' preprocessing: an earlier tool-call step inside a ToolACE
dialogue appears in the context as an assistant message ``<tool_call>[…calls…]</tool_call>`` (the
format the model is asked to produce) rather than as a doubly JSON-encoded string.

``toolace-trajectories:`` keeps ToolACE's multi-step dialogues whole instead of cutting them into steps:
one record per dialogue with ``env: "toolace_replay"`` and its ``replay`` script, for
:class:`tooln1.environments.replay.ReplayEnvironment` (docs/environments.md).

``bfcl-multi-turn:SPLIT[:CATEGORY]`` reads BFCL v3 multi-turn entries of one side of the seeded
train/eval split (``tooln1.environments.bfcl.split_indices``) as episodes for
:class:`tooln1.environments.bfcl.BFCLEnvironment`: GRPO trains on ``train`` while ``tooln1-eval``
scores the held-out ``eval`` side.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from tooln1.data.prompt import DEFAULT_PREAMBLE
from tooln1.data.records import make_record, read_records
from tooln1.data.synthetic import generate_xlam_rows
from tooln1.data.synthetic_multi_turn import generate_lookup_records
from tooln1.data.toolace_calls import CallParseError, looks_like_call_list, parse_calls

TOOLACE_MARKER = "JSON format that you can invoke:\n"
"""ToolACE system text is cut just after this; the JSON tool list follows it (docs/design.md §5)."""

DROP_REASONS = {
    "unreadable_row": "row is not a JSON object / could not be read",
    "empty_conversation": "no user query or no conversation",
    "bad_turn": "a turn has an unknown speaker or non-text content",
    "unparseable_tools": "tool list missing or not valid JSON",
    "unparseable_call": "answer / assistant call could not be parsed",
    "no_tool_call": "dialogue has no assistant tool-call step",
    "unknown_tool": "a call names a tool absent from the list (per example)",
    "unanswered_call": "a call step with no recorded tool response before the dialogue goes on (trajectories)",
    "orphan_tool_response": "a tool response that follows no call step (trajectories)",
}
_ROLE_OF = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
            "tool": "tool", "observation": "tool", "function": "tool", "function_response": "tool"}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class SourceStats:
    """Table-1 numbers for one source."""

    source: str
    raw_rows: int = 0
    raw_single: int = 0
    raw_multi: int = 0
    kept_single: int = 0
    kept_multi: int = 0
    kept_trajectories: int = 0  # whole multi-step dialogues, replayed by an environment
    dropped: Counter = field(default_factory=Counter)

    @property
    def kept(self) -> int:
        return self.kept_single + self.kept_multi + self.kept_trajectories

    def merge(self, other: SourceStats) -> SourceStats:
        out = SourceStats(self.source)
        for name in ("raw_rows", "raw_single", "raw_multi", "kept_single", "kept_multi", "kept_trajectories"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        out.dropped = self.dropped + other.dropped
        return out


class _Drop(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------------------------- reading

def looks_like_hub_id(location: str) -> bool:
    """``owner/name`` with no file extension and not a relative path: a Hugging Face dataset id."""
    return bool(_HUB_ID.match(location)) and not location.startswith(".") and not os.path.splitext(location)[1]


def read_rows(location: str, split: str = "train") -> tuple[list[dict], int]:
    """Raw rows of a hub dataset or local file/folder; returns (rows, unreadable_row_count).

    JSON/JSONL go through ``datasets``; when Arrow cannot unify the rows (a broken line, a field
    whose type changes between rows) the file is re-read leniently and the bad lines counted.
    """
    if os.path.isfile(location):
        ext = location.rsplit(".", 1)[-1].lower()
        if ext in ("json", "jsonl"):
            try:
                return _load_dataset("json", data_files=location, split="train", quiet=True), 0
            except Exception:  # noqa: BLE001 - schema/line errors: fall back to per-row reading
                return _read_json_lenient(location)
        if ext == "parquet":
            return _load_dataset("parquet", data_files=location, split="train"), 0
        raise ValueError(f"{location}: unsupported data file type .{ext} (use .json, .jsonl or .parquet)")
    if os.path.isdir(location):
        return _load_dataset(location, split=split), 0
    if looks_like_hub_id(location):
        try:
            return _load_dataset(location, split=split), 0
        except Exception as e:  # noqa: BLE001 - re-raise with the culprit named
            raise RuntimeError(f"could not load hub dataset {location!r} split {split!r} "
                               f"(no network? pass a local file instead): {e}") from e
    raise FileNotFoundError(f"data file not found: {location}")


def _load_dataset(*args, quiet: bool = False, **kwargs) -> list[dict]:
    """``datasets.load_dataset(...)`` as a list of dicts; ``quiet`` hides its error log (we retry)."""
    import datasets

    datasets.disable_progress_bars()
    level = datasets.logging.get_verbosity()
    if quiet:
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        return datasets.load_dataset(*args, **kwargs).to_list()
    finally:
        datasets.logging.set_verbosity(level)


def _read_json_lenient(path: str) -> tuple[list[dict], int]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    else:
        items = []
        for line in text.splitlines():
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError:
                    items.append(None)
    rows = [x for x in items if isinstance(x, dict)]
    return rows, len(items) - len(rows)


# ---------------------------------------------------------------------------------- converting

def _json_field(row: dict, name: str, reason: str) -> Any:
    value = row.get(name)
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError, ValueError):
            raise _Drop(reason) from None
    if value is None:
        raise _Drop(reason)
    return value


def _check_tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list) or not tools or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) and t["name"] for t in tools):
        raise _Drop("unparseable_tools")
    return tools


def _check_calls(calls: Any) -> list[dict]:
    if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("arguments"), dict)
            for c in calls):
        raise _Drop("unparseable_call")
    return [{"name": c["name"], "arguments": c["arguments"]} for c in calls]


def xlam_records(rows: Iterable[dict], source: str = "xlam") -> tuple[list[dict], SourceStats]:
    """xLAM rows ``{id, query, answers, tools}`` → one single-turn record each (all calls)."""
    stats, records = SourceStats(source), []
    for i, row in enumerate(rows):
        stats.raw_rows += 1
        stats.raw_single += 1
        try:
            if not isinstance(row, dict):
                raise _Drop("unreadable_row")
            query = row.get("query")
            if not isinstance(query, str) or not query.strip():
                raise _Drop("empty_conversation")
            tools = _check_tools(_json_field(row, "tools", "unparseable_tools"))
            answer = _check_calls(_json_field(row, "answers", "unparseable_call"))
            names = {t["name"] for t in tools}
            if any(c["name"] not in names for c in answer):
                raise _Drop("unknown_tool")
        except _Drop as d:
            stats.dropped[d.reason] += 1
            continue
        rid = row.get("id", i)
        records.append(make_record(f"{source}-{rid}", source, DEFAULT_PREAMBLE, tools,
                                   [{"role": "user", "content": query}], answer))
        stats.kept_single += 1
    return records, stats


def split_toolace_system(system: Any) -> tuple[str, list[dict]]:
    """ToolACE system text → (preamble cut after the marker, parsed tool list)."""
    if not isinstance(system, str):
        raise _Drop("unparseable_tools")
    idx = system.find(TOOLACE_MARKER)
    if idx < 0:
        raise _Drop("unparseable_tools")
    end = idx + len(TOOLACE_MARKER)
    start = end + (len(system[end:]) - len(system[end:].lstrip()))
    try:
        tools, _ = json.JSONDecoder().raw_decode(system, start)
    except (json.JSONDecodeError, RecursionError, ValueError):
        raise _Drop("unparseable_tools") from None
    return system[:end], _check_tools(tools)


def _toolace_turns(conversations: Any) -> list[dict]:
    """Normalise turns to {role, content, calls}; calls set on assistant tool-call steps."""
    if not isinstance(conversations, list) or not conversations:
        raise _Drop("empty_conversation")
    turns = []
    for turn in conversations:
        if not isinstance(turn, dict):
            raise _Drop("bad_turn")
        role = _ROLE_OF.get(str(turn.get("from", turn.get("role"))).lower())
        content = turn.get("value", turn.get("content"))
        if role is None or not isinstance(content, str):
            raise _Drop("bad_turn")
        calls = None
        if role == "assistant" and looks_like_call_list(content):
            try:
                calls = parse_calls(content)
            except CallParseError:
                raise _Drop("unparseable_call") from None
        turns.append({"role": role, "content": content, "calls": calls})
    if not any(t["role"] == "user" for t in turns):
        raise _Drop("empty_conversation")
    return turns


def call_message(calls: Sequence[dict]) -> str:
    """How an earlier tool-call step appears in the context (an assistant message)."""
    return "<tool_call>" + json.dumps(list(calls), ensure_ascii=False) + "</tool_call>"


def toolace_replay(turns: Sequence[dict]) -> list[dict]:
    """A dialogue's turns → its replay script: per user turn ``{"user": text, "steps": [{"calls",
    "responses"}]}``, each call step with the tool turns recorded right after it. The assistant's text
    replies are left out (the policy writes its own). Only the dialogue's very last step may lack a
    response: the episode ends when it is matched."""
    if turns[0]["role"] != "user":
        raise _Drop("empty_conversation")
    replay: list[dict] = []
    previous = "user"
    for turn in turns:
        kind = "call" if turn["calls"] is not None else turn["role"]
        if kind == "user":
            replay.append({"user": turn["content"], "steps": []})
        elif kind == "call":
            replay[-1]["steps"].append({"calls": turn["calls"], "responses": []})
        elif kind == "tool":
            if previous not in ("call", "tool"):
                raise _Drop("orphan_tool_response")
            replay[-1]["steps"][-1]["responses"].append(turn["content"])
        previous = kind
    if unanswered_step(replay):
        raise _Drop("unanswered_call")
    return replay


def unanswered_step(replay: Sequence[dict]) -> bool:
    """Whether a call step other than the dialogue's very last one has no recorded response."""
    last = replay[-1]["steps"][-1] if replay[-1]["steps"] else None
    return any(not step["responses"] and step is not last for t in replay for step in t["steps"])


def toolace_records(
    rows: Iterable[dict], source: str = "toolace", include_nocall: bool = False, trajectories: bool = False
) -> tuple[list[dict], SourceStats]:
    """ToolACE rows ``{system, conversations}`` → one record per assistant tool-call step.

    The context of a step is every earlier turn. ``include_nocall`` also turns plain assistant
    replies into examples with answer ``[]`` (off by default, as in the paper). ``trajectories``:
    a dialogue with two or more call steps becomes one trajectory record instead (`toolace_replay`),
    its first user turn the conversation and the first reply's calls the answer.
    """
    stats, records = SourceStats(source), []
    for i, row in enumerate(rows):
        stats.raw_rows += 1
        try:
            if not isinstance(row, dict):
                stats.raw_single += 1
                raise _Drop("unreadable_row")
            convs = row.get("conversations")
            multi = isinstance(convs, list) and sum(
                isinstance(t, dict) and _ROLE_OF.get(str(t.get("from", t.get("role"))).lower()) == "user"
                for t in convs) > 1
            stats.raw_multi += multi
            stats.raw_single += not multi
            preamble, tools = split_toolace_system(row.get("system"))
            turns = _toolace_turns(convs)
            steps = [k for k, t in enumerate(turns) if t["calls"] is not None
                     or (include_nocall and t["role"] == "assistant")]
            if not any(turns[k]["calls"] is not None for k in steps):
                raise _Drop("no_tool_call")
            names = {t["name"] for t in tools}
            if trajectories and sum(t["calls"] is not None for t in turns) > 1:
                replay = toolace_replay(turns)
                if any(c["name"] not in names for t in turns if t["calls"] for c in t["calls"]):
                    raise _Drop("unknown_tool")
                first = replay[0]["steps"][0]["calls"] if replay[0]["steps"] else []  # the first reply's calls
                records.append({**make_record(f"{source}-{row.get('id', i)}", source, preamble, tools,
                                              [{"role": "user", "content": replay[0]["user"]}], first),
                                "env": "toolace_replay", "replay": replay})
                stats.kept_trajectories += 1
                continue
        except _Drop as d:
            stats.dropped[d.reason] += 1
            continue
        context = [{"role": t["role"], "content": call_message(t["calls"]) if t["calls"] else t["content"]}
                   for t in turns]
        for k in steps:
            answer = turns[k]["calls"] or []
            if k == 0 or not any(t["role"] == "user" for t in turns[:k]):
                stats.dropped["empty_conversation"] += 1
                continue
            if any(c["name"] not in names for c in answer):
                stats.dropped["unknown_tool"] += 1
                continue
            records.append(make_record(f"{source}-{row.get('id', i)}-{k}", source, preamble, tools,
                                       context[:k], answer))
            if k == 1:
                stats.kept_single += 1
            else:
                stats.kept_multi += 1
    return records, stats


def bfcl_multi_turn_records(location: str) -> tuple[list[dict], SourceStats]:
    """``SPLIT[:CATEGORY]`` → BFCL multi-turn episodes of that split (default: the four categories
    BFCL v3 scores); needs ``nvidia-bfcl``."""
    from tooln1.environments.bfcl import load_records as load_bfcl_records

    split, _, category = location.partition(":")
    records = load_bfcl_records([category] if category else None, split=split)
    stats = SourceStats(f"bfcl-multi-turn:{location}", raw_rows=len(records))
    stats.raw_multi = stats.kept_trajectories = len(records)
    return records, stats


# --------------------------------------------------------------------------------- entry points

def load_source(kind: str, location: str, split: str = "train", **kwargs: Any) -> tuple[list[dict], SourceStats]:
    """Load one source: ``kind`` in xlam / toolace / synthetic / prepared / bfcl-multi-turn."""
    if kind == "synthetic" and kwargs.pop("lookup", False):  # a multi-turn task with its environment
        n, _, rest = location.partition(":")
        seed, _, careless = rest.partition(":")
        try:
            records = generate_lookup_records(int(n), int(seed or 0), careless=float(careless or 0))
        except ValueError as e:
            raise ValueError(f"bad synthetic-lookup spec {location!r}: expected N, N:SEED or N:SEED:CARELESS "
                             f"({e})") from None
        stats = SourceStats("synthetic-lookup", raw_rows=len(records))
        stats.raw_multi = stats.kept_multi = len(records)
        return records, stats
    if kind == "bfcl-multi-turn":
        return bfcl_multi_turn_records(location)
    if kind == "synthetic":
        n, _, seed = location.partition(":")
        try:
            rows = generate_xlam_rows(int(n), int(seed or 0), **kwargs)
        except ValueError as e:
            raise ValueError(f"bad synthetic spec {location!r}: expected N or N:SEED ({e})") from None
        return xlam_records(rows, "synthetic")
    if kind == "prepared":
        records = read_records(location)
        stats = SourceStats(f"prepared:{os.path.basename(location)}", raw_rows=len(records))
        for r in records:
            trajectory = "env" in r
            multi = trajectory or len(r["conversation"]) > 1
            stats.raw_multi += multi
            stats.raw_single += not multi
            stats.kept_trajectories += trajectory
            stats.kept_multi += multi and not trajectory
            stats.kept_single += not multi
        return records, stats
    if kind not in ("xlam", "toolace"):
        raise ValueError(f"unknown data source kind {kind!r}; expected xlam, toolace, synthetic, prepared "
                         "or bfcl-multi-turn")
    rows, unreadable = read_rows(location, split)
    convert = xlam_records if kind == "xlam" else toolace_records
    records, stats = convert(rows, kind, **kwargs)
    stats.raw_rows += unreadable
    stats.raw_single += unreadable
    stats.dropped["unreadable_row"] += unreadable
    stats.dropped = +stats.dropped  # drop zero counts
    return records, stats


def parse_data_spec(spec: str) -> tuple[str, str, dict]:
    """``kind:location`` → (kind, location, options). ``synthetic-simple:N[:SEED]`` sets simple,
    ``synthetic-tiny:N[:SEED]`` tiny (see ``tooln1.data.synthetic``), ``synthetic-lookup:N[:SEED[:CARELESS]]``
    the two-call task of ``tooln1.data.synthetic_multi_turn`` (multi-turn: ``grpo.max_turns`` > 1;
    CARELESS, the fraction of SFT demonstrations whose final call ignores the lookup);
    ``toolace-trajectories:PATH`` keeps ToolACE's multi-step dialogues whole
    (``toolace_records(trajectories=True)``); ``bfcl-multi-turn:SPLIT[:CATEGORY]`` BFCL's multi-turn
    episodes (``bfcl_multi_turn_records``)."""
    kind, sep, location = spec.partition(":")
    if not sep or not location:
        raise ValueError(f"bad data spec {spec!r}: expected xlam:PATH_OR_HUB_ID, toolace:PATH_OR_HUB_ID, "
                         "toolace-trajectories:PATH_OR_HUB_ID, synthetic:N[:SEED], synthetic-simple:N[:SEED], "
                         "synthetic-tiny:N[:SEED], synthetic-lookup:N[:SEED[:CARELESS]], "
                         "bfcl-multi-turn:SPLIT[:CATEGORY] or prepared:PATH")
    if kind == "toolace-trajectories":
        return "toolace", location, {"trajectories": True}
    if kind == "synthetic-simple":
        return "synthetic", location, {"simple": True}
    if kind == "synthetic-tiny":
        return "synthetic", location, {"tiny": True}
    if kind == "synthetic-lookup":
        return "synthetic", location, {"lookup": True}
    return kind, location, {}


def load_records_with_stats(spec: str, split: str = "train") -> tuple[list[dict], SourceStats]:
    """Records and Table-1 stats of one spec (see ``parse_data_spec``)."""
    kind, location, options = parse_data_spec(spec)
    return load_source(kind, location, split, **options)


def load_records(spec: str, split: str = "train") -> list[dict]:
    """Unified records of a spec such as ``xlam:data/xlam.json`` or ``synthetic:1000``."""
    return load_records_with_stats(spec, split)[0]
