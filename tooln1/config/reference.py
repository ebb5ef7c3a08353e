"""The schema rendered for people: the ``--help`` of the command lines and the key table of
docs/training.md (``python -m tooln1.config.reference`` prints it), both from
:func:`tooln1.config.schema.keys`, so neither can drift from the code."""
from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Sequence
from typing import Any

from tooln1.config.files import CONFIG_FLAG_HELP
from tooln1.config.schema import Config, keys

# absl's own help flags print its internals and exit 1; the command lines answer these instead
HELP_FLAGS = ("-h", "--help", "-?", "--helpshort", "--helpfull")
HELP_FLAG = ("-h, --help", "show this help and exit")
WIDTH = 100


def wants_help(argv: Sequence[str]) -> bool:
    """Whether the arguments (without the program name) ask for help."""
    return any(a in HELP_FLAGS for a in argv)


def shown(value: Any) -> str:
    """A default as it is typed on the command line (``""`` for the empty string)."""
    return (value or '""') if isinstance(value, str) else repr(value)


def flags_text(rows: Sequence[tuple[str, str]]) -> str:
    """``(flag, help)`` rows as two aligned columns, the help wrapped."""
    width = max(len(flag) for flag, _ in rows) + 4
    out = []
    for flag, text in rows:
        lines = textwrap.wrap(text, WIDTH - width) or [""]
        out.append(f"  {flag.ljust(width - 2)}{lines[0]}")
        out += [" " * width + line for line in lines[1:]]
    return "\n".join(out)


def keys_text() -> str:
    """Every config key as ``--config.KEY=DEFAULT`` and its help, section by section."""
    sections = {f.name: type(getattr(Config(), f.name)).__doc__ for f in dataclasses.fields(Config)}
    out, section = [], ""
    for key in keys():
        head = key.name.partition(".")[0] if "." in key.name else ""
        if head != section:
            section = head
            out.append(f"\n{section}: {sections[section]}")
        out.append(f"  --config.{key.name}={shown(key.default)}")
        out += textwrap.wrap(key.help, WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(out)


def usage(prog: str, summary: str, flags: Sequence[tuple[str, str]], with_keys: bool = False) -> str:
    """A command line's ``--help``: usage, ``summary``, its flags (the config flags first) and, with
    ``with_keys``, every config key."""
    keys_at = "keys below" if with_keys else "keys: tooln1-train --help"
    config_flags = [("--config FILE[:SPEC]", f"{CONFIG_FLAG_HELP}; required"),
                    ("--config.KEY=VALUE", f"override one config key, repeatable ({keys_at})")]
    text = (f"usage: {prog} --config FILE[:SPEC] [--config.KEY=VALUE ...]{' [flags]' if flags else ''}\n\n"
            + textwrap.fill(summary, WIDTH) + "\n\nflags:\n" + flags_text([*config_flags, *flags, HELP_FLAG]))
    if with_keys:
        text += "\n\nconfig keys, with the schema's defaults (a config file may change them):\n" + keys_text()
    return text


def key_table() -> str:
    """The markdown table of every config key with its default and help (docs/training.md)."""
    def cell(s: str, code: bool = False) -> str:  # no column breaks; plain text has no HTML tags
        s = s.replace("|", "\\|")
        return f"`{s}`" if code else s.replace("<", "&lt;").replace(">", "&gt;")

    rows = [f"| {cell(k.name, True)} | {cell(shown(k.default), True)} | {cell(k.help)} |" for k in keys()]
    return "\n".join(["| key | default | meaning |", "|---|---|---|", *rows])


if __name__ == "__main__":
    print(key_table())
