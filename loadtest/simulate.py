"""`utpm simulate`: replay a data set's held-out events as impressions and clicks against a running
service with two arms, and read back the paper's online metrics (QC, DCTR) per arm.

For every test user of the paper's protocol split (`utpm.data.protocol`, the users no model saw in
training): the service computes the user's profile from the history features (POST /profiles, the
A/B split decides the arm), then every label-period event of that user is reported to POST
/feedback as an impression of the item's tags, clicked when the event's label is 1. The service
restricts them to the served profile and aggregates QC and DCTR per arm (`GET /feedback/summary`).

This is a replay, not a live loop: what a user browsed is the logged history, whatever the profile
says, so QC here measures how many of the user's clicked tags the profile covers, and DCTR how
often the in-profile tags the user met were clicked. Because the A/B split gives each arm only part
of the users, the same replay is also scored *paired*: every test user against both arms' profiles
(pinned, nothing stored), with the same metric code, next to the offline Prec@K (Eq. 5) of those
same profiles, so the online ordering can be compared with the offline one on identical users.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from service.ab import PIN_HEADER
from service.online_metrics import Totals, difference, user_day
from utpm.evaluation.metrics import precision_at_k

if TYPE_CHECKING:
    from utpm.data.protocol import ProtocolSplit, Request

# Users per POST /profiles (the service takes at most 256) and events per POST /feedback.
PROFILE_CHUNK = 64
FEEDBACK_CHUNK = 50
# Items per feedback event (the service takes at most 1000); a longer label period is split.
ITEMS_PER_EVENT = 500


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _check(r: httpx.Response, what: str) -> Any:
    if r.status_code != 200:
        raise RuntimeError(f"{what}: HTTP {r.status_code}: {r.text[:300]}")
    return r.json()


def load_held_out(
    data: Path, seed: int, item_tags: int, test_share: float = 0.2
) -> tuple[list[tuple[str, Request, list[tuple[list[str], bool]]]], ProtocolSplit]:
    """(user id, history features, label-period impressions) of each test user of the protocol split
    (`test_share` of the users), and the split."""
    from utpm.data.loading import load_dataset
    from utpm.data.protocol import split_protocol

    split = split_protocol(load_dataset(data), seed=seed, test_fraction=test_share)
    users = []
    for i in split.indices(test=True).tolist():
        items = [(tags, label == 1) for tags, label in split.label_items(i, item_tags) if tags]
        if items:
            users.append((str(split.user_ids[i]), split.request(i), items))
    return users, split


def arms_tags_per_item(experiment: Mapping[str, Any]) -> int:
    """The N both arms were trained with (GET /experiment's `tags_per_item`): a replay's impressions
    carry each item's first N tags, as the training's labels did."""
    n = {arm: experiment[arm].get("tags_per_item") for arm in ("champion", "challenger")}
    if None in n.values() or n["champion"] != n["challenger"]:
        told = ", ".join(f"{arm} {v if v is not None else 'not recorded'}" for arm, v in n.items())
        raise ValueError(f"the arms' tags per item (N) are {told}: pass --item-tags")
    return int(n["champion"])


def arms_seed(experiment: Mapping[str, Any]) -> int:
    """The seed of the split both arms were trained under (GET /experiment's `trained_on`), so that
    the replay's test users are theirs; 0 when neither recorded one."""
    seeds = {arm: (experiment[arm].get("trained_on") or {}).get("seed") for arm in ("champion", "challenger")}
    if len(set(seeds.values())) > 1:
        told = ", ".join(f"{arm} {v}" for arm, v in seeds.items())
        raise ValueError(f"the arms were trained under other splits (seed: {told}): pass --seed")
    return int(seeds["champion"]) if isinstance(seeds["champion"], int) else 0


def arms_test_share(experiment: Mapping[str, Any]) -> float:
    """The share of test users the arms' runs held out, when they agree (else, or when not recorded,
    the protocol's 0.2: an arm split otherwise is then named in `not_held_out`)."""
    shares = {(experiment[arm].get("trained_on") or {}).get("test_fraction") for arm in ("champion", "challenger")}
    share = shares.pop() if len(shares) == 1 else None
    if share == 0:
        raise ValueError("the arms were trained with no user held out (--test-share 0): no held-out user to replay")
    return float(share) if isinstance(share, int | float) else 0.2


def simulate(
    base_url: str,
    data: Path,
    *,
    seed: int | None = None,
    k: int = 10,
    item_tags: int | None = None,
    prefix: str = "sim:",
    api_key: str | None = None,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Run the replay (module docstring) against the service at `base_url`; the figures as a dict."""
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s) as client:
        experiment = _check(client.get("/experiment"), "GET /experiment")
        if experiment.get("challenger") is None:
            raise RuntimeError(
                "the service serves no challenger; start it with UTPM_AB_CHALLENGER_BUNDLE or POST /admin/challenger"
            )
        item_tags = item_tags or arms_tags_per_item(experiment)
        seed = arms_seed(experiment) if seed is None else seed
        users, split = load_held_out(data, seed, item_tags, arms_test_share(experiment))
        if not users:
            raise ValueError(f"{data}: no test user with a labelled item that has tags")
        versions = {arm: experiment[arm]["model_version"] for arm in ("champion", "challenger")}
        # an arm trained on another split (another --seed, other data) has seen some of these "held-out" users
        differences = {arm: split.differences(experiment[arm].get("trained_on") or {}) for arm in versions}
        not_held_out = {arm: d for arm, d in differences.items() if d}

        # 1. the A/B: profiles by each user's arm (stored: feedback is restricted to them), then feedback
        served: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(users, PROFILE_CHUNK):
            body = {"users": [{"user_id": prefix + u, "features": f, "k": k} for u, f, _ in chunk]}
            for p in _check(client.post("/profiles", json=body), "POST /profiles")["profiles"]:
                served[p["user_id"]] = p
        events = []
        for u, _, items in users:
            p = served[prefix + u]
            for part in _chunks(items, ITEMS_PER_EVENT):
                impressions = [{"tags": tags, "clicked": clicked} for tags, clicked in part]
                events.append(
                    {"user_id": prefix + u, "model_version": p["model_version"], "k": k, "items": impressions}
                )
        counted = no_profile = 0
        for chunk in _chunks(events, FEEDBACK_CHUNK):
            got = _check(client.post("/feedback", json={"events": list(chunk)}), "POST /feedback")
            counted += got["counted"]
            no_profile += got["no_profile"]
        summary = _check(client.get("/feedback/summary", params={"days": 1}), "GET /feedback/summary")

        # 2. paired: every test user against both arms' profiles (pinned, not stored)
        paired: dict[str, Any] = {}
        for arm, version in versions.items():
            ranked: list[list[str]] = []
            for chunk in _chunks(users, PROFILE_CHUNK):
                body = {"users": [{"user_id": prefix + u, "features": f, "k": k, "store": False} for u, f, _ in chunk]}
                r = client.post("/profiles", json=body, headers={PIN_HEADER: version})
                ranked += [[t["tag"] for t in p["tags"]] for p in _check(r, "POST /profiles (pinned)")["profiles"]]
            totals = Totals()
            for tags, (_, _, items) in zip(ranked, users, strict=True):
                ud, _ = user_day(tags, items)
                totals.add_user_day((0, 0), (len(ud.clicked), len(ud.browsed)))
            clicked = [{t for tags, c in items if c for t in tags} for _, _, items in users]
            prec = {f"prec@{n}": precision_at_k(ranked, clicked, n).value for n in (1, 2, 3)}
            paired[arm] = {"model_version": version, "qc": totals.qc, "dctr": totals.dctr, **prec, "_totals": totals}
        paired_diff = difference(paired["champion"].pop("_totals"), paired["challenger"].pop("_totals"))
    arms_users = {arm: sum(1 for p in served.values() if p["arm"] == arm) for arm in versions}
    return {
        "service": base_url,
        "data": str(data),
        "seed": seed,
        "k": k,
        "item_tags": item_tags,
        "test_users": len(users),
        "feedback_events": {"counted": counted, "no_profile": no_profile},
        "arms": {
            arm: {"model_version": versions[arm], "model": experiment[arm]["model"], "users": arms_users[arm]}
            for arm in versions
        },
        "challenger_share": experiment["challenger_share"],
        "not_held_out": not_held_out,
        "ab": summary,
        "paired": {**paired, "difference": paired_diff},
    }


def markdown(result: dict[str, Any]) -> str:
    """The figures as a Markdown table (what docs/results.md quotes)."""

    def f(x: Any, digits: int = 3) -> str:
        return "–" if x is None else f"{x:.{digits}f}"

    def ci(entry: dict[str, Any]) -> str:
        lo_hi = entry.get("ci95")
        return f"{f(entry['diff'])} [{f(lo_hi[0])}, {f(lo_hi[1])}]" if lo_hi else f(entry.get("diff"))

    lines = [
        "| arm | model | A/B users | A/B QC per user | A/B DCTR | paired QC | paired DCTR | Prec@1 | Prec@2 | Prec@3 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ("champion", "challenger"):
        a, ab, pr = result["arms"][arm], result["ab"]["arms"][arm]["totals"], result["paired"][arm]
        lines.append(
            f"| {arm} | {a['model']} ({a['model_version']}) | {ab['users']} | {f(ab['qc'])} | {f(ab['dctr'])} | "
            f"{f(pr['qc'])} | {f(pr['dctr'])} | {f(pr['prec@1'])} | {f(pr['prec@2'])} | {f(pr['prec@3'])} |"
        )
    d, p = result["ab"].get("difference", {}), result["paired"]["difference"]
    lines += [
        "",
        f"challenger − champion, A/B (split users): QC {ci(d['qc'])}, DCTR {ci(d['dctr'])}; "
        f"paired (every test user on both arms; the interval treats the arms as independent, so it is conservative): "
        f"QC {ci(p['qc'])}, DCTR {ci(p['dctr'])} ({d['method']}).",
    ]
    for arm, differences in result.get("not_held_out", {}).items():
        lines.append(
            f"\nnote: the {arm} was trained on another split than this replay's ({', '.join(differences)}): "
            "some of these test users may be its training users, and its figures are then not held out."
        )
    return "\n".join(lines)
