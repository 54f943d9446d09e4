"""A/B commands: `utpm simulate` (the feedback loop replayed, loadtest/simulate.py) and `utpm bench ab`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from utpm.data.errors import DataError
from utpm_cli.errors import fail, output_file, require_bundle


def simulate_cmd(
    url: Annotated[
        str, typer.Argument(help="Base URL of a running service with a challenger, e.g. http://127.0.0.1:8000.")
    ],
    data: Annotated[Path, typer.Argument(help="The data set (generic format) the bundles were trained on.")],
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of the protocol's user split (default: the arms' training seed, GET /experiment)."),
    ] = None,
    k: Annotated[int, typer.Option(min=1, help="Tags per served profile (what QC/DCTR restrict to).")] = 10,
    item_tags: Annotated[
        int | None,
        typer.Option(min=1, help="Tags per item, as the models saw them (default: the arms' N, GET /experiment)."),
    ] = None,
    prefix: Annotated[
        str, typer.Option(help="Prefix of the simulated user ids (a new one: a new A/B split).")
    ] = "sim:",
    api_key: Annotated[
        str | None, typer.Option(envvar="UTPM_API_KEY", help="Key with the write role, if needed.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_file, help="Write the figures here as JSON.")
    ] = None,
) -> None:
    """Replay the held-out events as impressions and clicks; print QC/DCTR per arm (A/B and paired) and Prec@K."""
    import httpx

    from loadtest.simulate import markdown, simulate

    try:
        result = simulate(url, data, seed=seed, k=k, item_tags=item_tags, prefix=prefix, api_key=api_key)
    except httpx.TransportError as e:  # the message alone ("Connection refused") would not say to what
        fail(f"cannot reach the service at {url}: {e}")
    except (DataError, ValueError, RuntimeError, httpx.HTTPError) as e:
        fail(str(e))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=1) + "\n")
    typer.echo(markdown(result))


def bench_ab_cmd(
    champion: Annotated[Path, typer.Argument(help="An indexed bundle (the champion).")],
    challenger: Annotated[Path, typer.Argument(help="Another indexed bundle (the challenger).")],
    requests: Annotated[int, typer.Option(min=1, help="GET requests per variant, over all rounds.")] = 20_000,
    rounds: Annotated[int, typer.Option(min=1, help="Alternated rounds per variant.")] = 5,
    json_out: Annotated[
        Path,
        typer.Option(
            "--json", callback=output_file, help="Write the figures here as JSON (`utpm bench report` renders them)."
        ),
    ] = Path("artifacts/ab/bench-ab.json"),
) -> None:
    """Event-loop CPU per cached GET: the handler before A/B, with no challenger, with a challenger at 0.5."""
    import sys

    from loadtest.ab_bench import run_ab_bench

    for bundle in (champion, challenger):
        require_bundle(bundle)
    result = run_ab_bench(champion, challenger, requests=requests, rounds=rounds)
    result["command"] = "utpm " + " ".join(sys.argv[1:])
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=1) + "\n")
    typer.echo(json.dumps(result["loop_us_per_get_hit"], indent=1))
    typer.echo(f"measured A/B routing per cached GET in {result['rounds']} rounds; wrote {json_out}")
