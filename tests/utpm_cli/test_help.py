"""`utpm --help` and `utpm bench --help` list every command once, under its section, in the order
data flows (`SECTIONS`, `BENCH_SECTIONS`): a command registered without a section would fall into
Typer's catch-all "Commands" box, and Typer's own order puts sub-groups such as `prepare` last."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pytest
from typer.testing import CliRunner

from utpm_cli.main import BENCH_SECTIONS, SECTIONS, app


def _listed(help_text: str) -> list[tuple[str, str]]:
    """(section title, command name) of each command row of a help page, top to bottom."""
    rows, section = [], ""
    for line in help_text.splitlines():
        if title := re.match(r"╭─ (.+?) ─", line):
            section = title.group(1)
        elif section not in ("", "Options", "Arguments") and (name := re.match(r"│ ([a-z][a-z-]*) ", line)):
            rows.append((section, name.group(1)))
    return rows


@pytest.mark.parametrize(
    ("args", "sections"), [((), SECTIONS), (("bench",), BENCH_SECTIONS)], ids=["utpm", "utpm bench"]
)
def test_help_lists_every_command_under_its_section_in_the_order_data_flows(
    args: tuple[str, ...], sections: Mapping[str, Sequence[str]]
) -> None:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    wanted = [(title, name) for title, names in sections.items() for name in names]
    assert _listed(result.output) == wanted
