"""`utpm bench payloads`: held-out users' request bodies for the serving benchmarks' --payloads."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from loadtest.payloads import PayloadSource
from utpm.data.loading import load_dataset
from utpm.data.protocol import split_protocol
from utpm_cli.main import app


def test_payloads_are_the_test_users_requests_with_or_without_their_clicked_items(
    movielens_sample_dir: Path, tmp_path: Path
) -> None:
    split = split_protocol(load_dataset(movielens_sample_dir), seed=0)
    test_users = split.indices(test=True)
    for items in (True, False):
        out = tmp_path / f"payloads-{items}.jsonl"
        args = ["bench", "payloads", str(movielens_sample_dir), str(out), *([] if items else ["--no-items"])]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        rows = [json.loads(line)["features"] for line in out.read_text().splitlines()]
        assert f"wrote {len(rows)} request bodies" in res.output and len(rows) == len(test_users)
        expected = [split.request(int(i)) if items else split.features(int(i)) for i in test_users]
        assert rows == expected
        assert any("clicked_items" in r for r in rows) is items
        assert len(PayloadSource.from_jsonl(out).bodies) == len(rows)  # what --payloads reads
    out = tmp_path / "payloads-2.jsonl"
    res = CliRunner().invoke(app, ["bench", "payloads", str(movielens_sample_dir), str(out), "--max-items", "2"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line)["features"] for line in out.read_text().splitlines()]
    assert [r.get("clicked_items") for r in rows] == [
        split.request(int(i)).get("clicked_items", [])[-2:] or None for i in test_users
    ]
