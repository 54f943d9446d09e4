"""`utpm bench payloads`: held-out users' request bodies for the serving benchmarks' --payloads."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from loadtest.payloads import PayloadSource
from utpm.data.loading import load_dataset
from utpm.data.protocol import split_protocol
from utpm_cli.main import app


def test_payloads_are_the_test_users_requests_with_or_without_their_clicked_items_and_counts(
    movielens_sample_dir: Path, tmp_path: Path
) -> None:
    split = split_protocol(load_dataset(movielens_sample_dir), seed=0)
    test_users = split.indices(test=True)
    for items, counts in ((True, True), (False, True), (True, False)):
        out = tmp_path / f"payloads-{items}-{counts}.jsonl"
        flags = [*([] if items else ["--no-items"]), *([] if counts else ["--no-counts"])]
        res = CliRunner().invoke(app, ["bench", "payloads", str(movielens_sample_dir), str(out), *flags])
        assert res.exit_code == 0, res.output
        rows = [json.loads(line)["features"] for line in out.read_text().splitlines()]
        assert f"wrote {len(rows)} request bodies" in res.output and len(rows) == len(test_users)
        expected = [split.request(int(i), counts) for i in test_users]
        if not items:
            expected = [{k: v for k, v in r.items() if k != "clicked_items"} for r in expected]
        assert rows == expected
        assert any("clicked_items" in r for r in rows) is items
        assert any(isinstance(r.get("clicked_tags"), dict) for r in rows) is counts
        assert len(PayloadSource.from_jsonl(out).bodies) == len(rows)  # what --payloads reads
    res = CliRunner().invoke(
        app, ["bench", "payloads", str(movielens_sample_dir), str(out), "--no-counts", "--no-tag-items"]
    )
    assert res.exit_code == 2 and "the distinct items go with the counts" in res.output
    out = tmp_path / "payloads-2.jsonl"
    res = CliRunner().invoke(app, ["bench", "payloads", str(movielens_sample_dir), str(out), "--max-items", "2"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line)["features"] for line in out.read_text().splitlines()]
    assert [r.get("clicked_items") for r in rows] == [split.clicked_items(int(i))[-2:] or None for i in test_users]
