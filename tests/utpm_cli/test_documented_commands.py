"""Every `utpm` command the README and docs/ show names a command that exists, with options it takes:
the docs' figures are reproduced by these commands, so a renamed option must not leave them stale."""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from utpm_cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a command starts at `utpm` (or `.venv/bin/utpm`) followed by a word, after a separator or the start
START = re.compile(r"(?:^|[\s;&|(])(?:\.venv/bin/)?utpm\s+(?=[a-z])")
SEPARATORS = re.compile(r"\s(?:&&|\|\||;|\|)\s|;\s*(?:do|done|then)\b|\bdo\s")


def shown_commands(text: str) -> Iterator[str]:
    """The text after `utpm` of each command in fenced blocks (continuation lines joined) and in
    inline code spans."""
    spans = [m.group(1) for m in re.finditer(r"```[^\n]*\n(.*?)```", text, re.S)]
    spans = [re.sub(r"\\\n\s*", " ", s) for s in spans]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans += [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]  # a span may wrap a line
    for span in spans:
        for line in span.splitlines():
            line = line.split(" #")[0]  # a shell comment
            for part in SEPARATORS.split(line):
                m = START.search(part)
                if m:
                    yield part[m.end() :].strip()


@functools.cache
def root_command() -> Any:
    """The Typer app as a click command tree, built once (building it takes tens of milliseconds)."""
    return typer.main.get_command(app)


def problem(args_text: str) -> str | None:
    """Why `utpm ARGS` would not parse as far as names go (command, options), or None."""
    try:
        args = shlex.split(args_text)
    except ValueError:
        args = args_text.split()
    args = [a.strip("[]") for a in args]
    if "--" in args:  # `utpm bench commits A B -- COMMAND`: the command after it too
        cut = args.index("--")
        inner = args[cut + 1 :]
        if inner[:1] == ["utpm"]:
            why = problem(shlex.join(inner[1:]))
            if why:
                return why
        args = args[:cut]
    cmd = root_command()
    path: list[str] = []
    while hasattr(cmd, "list_commands"):
        if not args or args[0].startswith("-"):
            return None  # a group's own help
        if "|" in args[0]:  # `bench serve|tune`: each of the commands shown
            rest = shlex.join(args[1:])
            whys = [problem(" ".join([*path, alt, rest])) for alt in args[0].split("|")]
            return next((w for w in whys if w), None)
        sub = cmd.get_command(None, args[0])
        if sub is None:
            return f"no command `utpm {' '.join([*path, args[0]])}`"
        path.append(args.pop(0))
        cmd = sub
    known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for a in args:
        name = a.split("=", 1)[0]
        if name.startswith("--") and len(name) > 2 and name not in known:
            return f"`utpm {' '.join(path)}` has no option {name}"
    return None


def test_every_documented_command_parses() -> None:
    found, bad = 0, []
    for doc in DOCS:
        for command in shown_commands(doc.read_text()):
            found += 1
            why = problem(command)
            if why:
                bad.append(f"{doc.relative_to(ROOT)}: {why}: utpm {command[:120]}")
    assert found > 150, found  # the extraction finds the docs' commands at all
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_wrong_command_and_a_wrong_option() -> None:
    text = "```bash\nutpm bench serve --bundle B \\\n  --user 16\n```\nthen `utpm servee B` and `utpm (the tool)`\n"
    assert [problem(c) for c in shown_commands(text)] == [
        "`utpm bench serve` has no option --user",
        "no command `utpm servee`",
    ]
    inner = "`utpm bench commits A B --rounds 2 -- utpm bench loop B --request 10 --json '{json}'`"
    assert [problem(c) for c in shown_commands(inner)] == ["`utpm bench loop` has no option --request"]
