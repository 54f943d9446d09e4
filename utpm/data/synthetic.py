"""Synthetic WeChat-like data with planted user-tag interests.

`generate_synthetic` writes the project's generic data format (items, events, users) plus the
ground truth (`truth.csv`: each user's planted interest tags) so that a profile model can be
scored against what it should recover. The shape follows the paper's "Top Stories" data:

* tags: Zipf popularity, grouped into contiguous blocks owned by categories (topics), so that
  co-occurrence - and therefore learned tag embeddings - has real structure;
* items: one category, one account (accounts belong to categories), 1-5 tags drawn from the
  category's block with Zipf popularity, occasionally one popular tag from anywhere;
* users: demographics (gender, age bucket, city) that tilt which 1-3 categories they like, and
  3-8 planted interest tags in those categories;
* events: per user a time-ordered impression stream; an impression is clicked with probability
  `P_CLICK_INTEREST` when one of the item's tags is a planted interest, else `P_CLICK_RANDOM`.
  A click is thus explained by ONE of the item's tags (the case the paper's joint loss targets).

Everything is vectorised numpy; users and their events are generated `USER_CHUNK` users at a
time and events are streamed to Parquet one row group per chunk, so memory stays bounded.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from utpm.data.dataset_folder import start_dataset

__all__ = ["SyntheticReport", "generate_synthetic"]

# Users per chunk. Part of the RNG layout (each chunk has its own seeded stream): changing it
# changes the generated data, so it is a constant rather than a parameter.
USER_CHUNK = 10_000

TAG_ZIPF = 1.05  # within-category tag popularity exponent
CATEGORY_ZIPF = 0.7  # category popularity exponent (category size follows popularity)
ITEM_ZIPF = 0.8  # item popularity exponent (over a random ranking of items)
ACCOUNT_ZIPF = 1.1  # within-category account popularity exponent
ITEMS_PER_ACCOUNT = 40
TAGS_PER_ITEM_P = (0.15, 0.25, 0.30, 0.20, 0.10)  # P(k tags), k = 1..5
P_EXTRA_GLOBAL_TAG = 0.10  # item gets one popular tag from any category ("mostly" own category)

INTEREST_CATS_P = (0.30, 0.45, 0.25)  # P(user likes 1, 2, 3 categories)
INTEREST_TAGS_RANGE = (3, 8)  # planted interest tags per user, inclusive
INTEREST_CANDIDATES = 16  # draws per user from which the first distinct ones are kept
TILT_GENDER, TILT_AGE, TILT_REGION = 0.5, 0.5, 0.3  # std of demographic category-logit shifts

GENDERS = ("m", "f")
GENDER_P = (0.52, 0.48)
AGES = ("<18", "18-24", "25-34", "35-44", "45-54", "55+")
AGE_P = (0.08, 0.22, 0.28, 0.20, 0.13, 0.09)
N_CITIES, N_REGIONS, CITY_ZIPF = 300, 8, 1.0

# Impression mix: a Beta(7, 13) share (mean 0.35) of a user's impressions shows an item carrying
# one of their interest tags; of the rest, SAME_CATEGORY_SHARE come from their interest
# categories (so a category alone does not explain clicks) and the others are popular items.
INTEREST_SHARE_BETA = (7.0, 13.0)
SAME_CATEGORY_SHARE = 0.3
P_CLICK_INTEREST = 0.8
P_CLICK_RANDOM = 0.05

EVENTS_START = 1_600_000_000  # 2020-09-13 UTC
EVENTS_SPAN_S = 30 * 86_400  # 30 days of logs, as in the paper
_SPAN_BITS = 22  # 2**22 > EVENTS_SPAN_S: time offsets are packed under the user index for sorting

_PAD_ITEM, _PAD_USER = -1, -2  # distinct pads so padding never matches in the interest test

_EVENTS_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("label", pa.int8())]
)
_USERS_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("gender", pa.string()), ("age", pa.string()), ("city", pa.string())]
)


@dataclass(frozen=True)
class SyntheticReport:
    """What `generate_synthetic` wrote and what it cost.

    `peak_rss_mb` is the process's peak resident set size (`ru_maxrss`), which includes whatever
    the process held before the call.
    """

    out: Path
    rows: dict[str, int]
    seconds: float
    peak_rss_mb: float
    paths: dict[str, Path]
    stats: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "rows": dict(self.rows),
            "seconds": round(self.seconds, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "paths": {k: str(v) for k, v in self.paths.items()},
            "stats": dict(self.stats),
        }


@dataclass
class _World:
    """Tag, category, account and item tables shared by all user chunks."""

    n_tags: int
    n_categories: int
    tag_cat: np.ndarray  # (T,) category of each tag
    tag_start: np.ndarray  # (C + 1,) tag block boundaries per category
    tag_weight: np.ndarray  # (T,) global popularity, sums to 1
    cum_interest: np.ndarray  # (T + 1,) cumsum of popularity over tags that occur in items
    cat_logp: np.ndarray  # (C,) log category popularity
    item_cat: np.ndarray  # (I,) items are grouped by category
    item_start: np.ndarray  # (C + 1,) item block boundaries per category
    item_ptr: np.ndarray  # (I + 1,) CSR offsets into item_tags
    item_tags: np.ndarray  # flat tag ids of all items
    item_pad: np.ndarray  # (I, 5) tag ids padded with _PAD_ITEM
    item_account: np.ndarray  # (I,) account ids
    n_accounts: int
    cum_item: np.ndarray  # (I + 1,) cumsum of item popularity
    tag_ptr: np.ndarray  # (T + 1,) CSR offsets into tag_items (inverted index)
    tag_items: np.ndarray  # items holding each tag


def _width(n: int) -> int:
    return max(6, len(str(max(n - 1, 0))))


def _ids(prefix: str, n: int) -> pa.StringArray:
    w = _width(n)
    return pa.array([f"{prefix}{i:0{w}d}" for i in range(n)], type=pa.string())


def _allocate(total: int, weights: np.ndarray, minimum: int) -> np.ndarray:
    """Split `total` into integer parts proportional to `weights`, each at least `minimum`.

    Largest-remainder rounding, ties broken by index, so the split is deterministic.
    """
    n = len(weights)
    rest = total - minimum * n
    if rest < 0:
        raise ValueError(f"cannot give {n} parts at least {minimum} each out of {total}")
    share = weights / weights.sum() * rest
    parts = np.floor(share).astype(np.int64)
    short = rest - int(parts.sum())
    if short:
        parts[np.argsort(-(share - parts), kind="stable")[:short]] += 1
    return parts + minimum


def _block_zipf(starts: np.ndarray, exponent: float) -> np.ndarray:
    """Zipf weights by rank inside each contiguous block, each block normalised to sum 1."""
    sizes = np.diff(starts)
    block = np.repeat(np.arange(len(sizes)), sizes)
    rank = np.arange(int(starts[-1])) - starts[block]
    w = (rank + 1.0) ** -exponent
    return w / np.bincount(block, weights=w, minlength=len(sizes))[block]


def _cum0(weights: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(weights, dtype=np.float64)])


def _sample_blocks(rng: np.random.Generator, cum0: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Draw one index per row from [lo, hi) with probability proportional to the weights.

    `cum0` is the weights' cumulative sum with a leading 0. Zero-weight entries are never drawn:
    u lies in (cum0[lo], cum0[hi]] and entry j owns (cum0[j], cum0[j + 1]].
    """
    a, b = cum0[lo], cum0[hi]
    u = a + (1.0 - rng.random(len(lo))) * (b - a)
    j = np.searchsorted(cum0, u, side="left") - 1
    return np.clip(j, lo, hi - 1)


def _dedupe_pairs(rows: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Mask keeping the first occurrence of each (row, value) pair, in the original order."""
    order = np.lexsort((vals, rows))  # stable: equal pairs keep their original order
    r, v = rows[order], vals[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (r[1:] != r[:-1]) | (v[1:] != v[:-1])
    keep = np.empty_like(first)
    keep[order] = first
    return keep


def _build_world(rng: np.random.Generator, n_tags: int, n_items: int, n_categories: int) -> _World:
    """Tags, categories, accounts and items (everything not tied to a user)."""
    cat_w = (np.arange(n_categories) + 1.0) ** -CATEGORY_ZIPF
    cat_w /= cat_w.sum()
    # Popular topics own more tags and more items, as in a news corpus.
    tag_start = np.concatenate([[0], np.cumsum(_allocate(n_tags, cat_w, 1))])
    tag_cat = np.repeat(np.arange(n_categories), np.diff(tag_start))
    tag_local = _block_zipf(tag_start, TAG_ZIPF)
    tag_weight = cat_w[tag_cat] * tag_local
    cum_tag = _cum0(tag_weight)

    m_c = _allocate(n_items, cat_w, 1)
    item_start = np.concatenate([[0], np.cumsum(m_c)])
    item_cat = np.repeat(np.arange(n_categories), m_c)
    k = rng.choice(np.arange(1, 6), size=n_items, p=TAGS_PER_ITEM_P)

    # Decide how often each tag occurs first (every tag at least once while the category has
    # slots to spare, the rest Zipf), then deal the occurrences out to the category's items:
    # this covers the whole tag vocabulary, unlike drawing each slot independently.
    slots_c = np.bincount(item_cat, weights=k, minlength=n_categories).astype(np.int64)
    sizes = np.diff(tag_start)
    covered = np.minimum(slots_c, sizes)
    rank = np.arange(n_tags) - tag_start[tag_cat]
    counts = (rank < covered[tag_cat]).astype(np.int64)
    extra_cat = np.repeat(np.arange(n_categories), slots_c - covered)
    extra = _sample_blocks(rng, _cum0(tag_local), tag_start[extra_cat], tag_start[extra_cat + 1])
    counts += np.bincount(extra, minlength=n_tags)
    occ = np.repeat(np.arange(n_tags), counts)  # grouped by category, like the items
    occ = occ[np.lexsort((rng.random(len(occ)), tag_cat[occ]))]  # shuffle within category
    slot_item = np.repeat(np.arange(n_items), k)

    # A few items also carry a popular tag from anywhere: categories overlap a little.
    gets_extra = (k < 5) & (rng.random(n_items) < P_EXTRA_GLOBAL_TAG)
    extra_items = np.flatnonzero(gets_extra)
    lo = np.zeros(len(extra_items), dtype=np.int64)
    extra_tags = _sample_blocks(rng, cum_tag, lo, lo + n_tags)
    rows = np.concatenate([slot_item, extra_items])
    vals = np.concatenate([occ, extra_tags])
    order = np.argsort(rows, kind="stable")  # the extra tag goes after the item's own tags
    rows, vals = rows[order], vals[order]
    keep = _dedupe_pairs(rows, vals)
    rows, vals = rows[keep], vals[keep]

    n_per_item = np.bincount(rows, minlength=n_items)
    item_ptr = np.concatenate([[0], np.cumsum(n_per_item)])
    item_pad = np.full((n_items, 5), _PAD_ITEM, dtype=np.int32)
    item_pad[rows, np.arange(len(rows)) - item_ptr[rows]] = vals

    inv = np.argsort(vals, kind="stable")
    tag_count = np.bincount(vals, minlength=n_tags)
    tag_ptr = np.concatenate([[0], np.cumsum(tag_count)])

    acc_c = np.maximum(1, np.rint(m_c / ITEMS_PER_ACCOUNT).astype(np.int64))
    acc_start = np.concatenate([[0], np.cumsum(acc_c)])
    item_account = _sample_blocks(
        rng, _cum0(_block_zipf(acc_start, ACCOUNT_ZIPF)), acc_start[item_cat], acc_start[item_cat + 1]
    )

    item_w = (rng.permutation(n_items) + 1.0) ** -ITEM_ZIPF
    return _World(
        n_tags=n_tags,
        n_categories=n_categories,
        tag_cat=tag_cat,
        tag_start=tag_start,
        tag_weight=tag_weight,
        # Planted interests only use tags some item carries, so every interest can be shown.
        cum_interest=_cum0(tag_weight * (tag_count > 0)),
        cat_logp=np.log(cat_w),
        item_cat=item_cat,
        item_start=item_start,
        item_ptr=item_ptr,
        item_tags=vals.astype(np.int64),
        item_pad=item_pad,
        item_account=item_account,
        n_accounts=int(acc_start[-1]),
        cum_item=_cum0(item_w / item_w.sum()),
        tag_ptr=tag_ptr,
        tag_items=rows[inv],
    )


def _join_lists(values: pa.Array, ptr: np.ndarray) -> pa.Array:
    lists = pa.ListArray.from_arrays(pa.array(ptr.astype(np.int32)), values)
    return pc.binary_join(lists, "|")


def _items_table(w: _World, item_ids: pa.StringArray, tag_ids: pa.StringArray) -> pa.Table:
    cat_ids = _ids("cat", w.n_categories)
    acc_ids = _ids("acc", w.n_accounts)
    return pa.table(
        {
            "item_id": item_ids,
            "tags": _join_lists(tag_ids.take(pa.array(w.item_tags)), w.item_ptr),
            "categories": cat_ids.take(pa.array(w.item_cat)),
            "account": acc_ids.take(pa.array(w.item_account)),
        }
    )


def _tags_table(w: _World, tag_ids: pa.StringArray) -> pa.Table:
    cat_ids = _ids("cat", w.n_categories)
    return pa.table(
        {
            "tag": tag_ids,
            "category": cat_ids.take(pa.array(w.tag_cat)),
            "popularity": pa.array(w.tag_weight),
            "n_items": pa.array(np.diff(w.tag_ptr)),
        }
    )


@dataclass
class _Chunk:
    users: pa.Table
    events: pa.Table
    truth_rows: list[str]
    clicks: int
    interest_shown: int
    interest_clicks: int


def _user_chunk(
    w: _World,
    rng: np.random.Generator,
    first: int,
    n: int,
    user_width: int,
    events_per_user: int,
    city_p: np.ndarray,
    tilts: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    item_ids: pa.StringArray,
    tag_ids: pa.StringArray,
) -> _Chunk:
    """Users `first .. first + n - 1`: demographics, planted interests and impressions."""
    tilt_g, tilt_a, tilt_r, city_region = tilts
    c = w.n_categories
    gender = rng.choice(len(GENDERS), size=n, p=GENDER_P)
    age = rng.choice(len(AGES), size=n, p=AGE_P)
    city = rng.choice(N_CITIES, size=n, p=city_p)

    # Interest categories: Gumbel top-k of popularity + demographic tilts = sampling without
    # replacement from softmax(logits), best first.
    kc = min(len(INTEREST_CATS_P), c)
    logits = w.cat_logp[None, :] + tilt_g[gender] + tilt_a[age] + tilt_r[city_region[city]]
    logits += rng.gumbel(size=(n, c))
    top = np.argpartition(-logits, kc - 1, axis=1)[:, :kc]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(logits, top, 1), axis=1), 1)
    n_cat = np.minimum(rng.choice(np.arange(1, len(INTEREST_CATS_P) + 1), size=n, p=INTEREST_CATS_P), kc)

    # Interest tags: popularity-weighted draws inside the user's categories; keep the first
    # n_int distinct ones.
    lo_n, hi_n = INTEREST_TAGS_RANGE
    n_int = rng.integers(lo_n, hi_n + 1, size=n)
    kk = INTEREST_CANDIDATES
    cand_cat = np.take_along_axis(top, (rng.random((n, kk)) * n_cat[:, None]).astype(np.int64), 1).ravel()
    cand = _sample_blocks(rng, w.cum_interest, w.tag_start[cand_cat], w.tag_start[cand_cat + 1])
    row = np.repeat(np.arange(n), kk)
    first_seen = _dedupe_pairs(row, cand).reshape(n, kk)
    rank = np.cumsum(first_seen, axis=1)
    keep = first_seen & (rank <= n_int[:, None])
    interests = np.full((n, hi_n), _PAD_USER, dtype=np.int32)
    r_idx, c_idx = np.nonzero(keep)
    interests[r_idx, rank[r_idx, c_idx] - 1] = cand.reshape(n, kk)[r_idx, c_idx]
    n_int = keep.sum(axis=1)

    # Impressions: exact total per chunk, per-user counts vary (gamma-mixed multinomial).
    total = n * events_per_user
    act = rng.gamma(2.0, 1.0, size=n)
    per_user = 1 + rng.multinomial(total - n, act / act.sum())
    ev_user = np.repeat(np.arange(n), per_user)
    share = rng.beta(*INTEREST_SHARE_BETA, size=n)[ev_user]
    r = rng.random(total)
    is_int = r < share
    is_cat = ~is_int & (r < share + (1.0 - share) * SAME_CATEGORY_SHARE)
    is_pop = ~(is_int | is_cat)
    item = np.empty(total, dtype=np.int64)

    u = ev_user[is_int]
    tag = interests[u, (rng.random(len(u)) * n_int[u]).astype(np.int64)]
    start = w.tag_ptr[tag]
    cnt = w.tag_ptr[tag + 1] - start
    item[is_int] = w.tag_items[start + (rng.random(len(u)) * cnt).astype(np.int64)]

    u = ev_user[is_cat]
    cat = top[u, (rng.random(len(u)) * n_cat[u]).astype(np.int64)]
    item[is_cat] = _sample_blocks(rng, w.cum_item, w.item_start[cat], w.item_start[cat + 1])

    m = int(is_pop.sum())
    item[is_pop] = _sample_blocks(rng, w.cum_item, np.zeros(m, np.int64), np.full(m, len(w.item_cat)))

    # Clicked iff the item carries one of the user's interest tags (with noise).
    hit = (w.item_pad[item][:, :, None] == interests[ev_user][:, None, :]).any(axis=(1, 2))
    label = (rng.random(total) < np.where(hit, P_CLICK_INTEREST, P_CLICK_RANDOM)).astype(np.int8)

    # Impression types are exchangeable, so sorting only the times gives each user a
    # time-ordered stream.
    offs = rng.integers(0, EVENTS_SPAN_S, size=total)
    key = np.sort((ev_user.astype(np.int64) << _SPAN_BITS) | offs)
    ts = EVENTS_START + (key & ((1 << _SPAN_BITS) - 1))

    user_ids = pa.array([f"u{first + i:0{user_width}d}" for i in range(n)], type=pa.string())
    users = pa.table(
        {
            "user_id": user_ids,
            "gender": pa.array(np.array(GENDERS)[gender], type=pa.string()),
            "age": pa.array(np.array(AGES)[age], type=pa.string()),
            "city": pa.array([f"city{x:04d}" for x in city], type=pa.string()),
        }
    )
    events = pa.table(
        {
            "user_id": user_ids.take(pa.array(ev_user)),
            "item_id": item_ids.take(pa.array(item)),
            "timestamp": pa.array(ts, type=pa.int64()),
            "label": pa.array(label, type=pa.int8()),
        }
    )
    uid = user_ids.to_pylist()
    tname = tag_ids.take(pa.array(interests[r_idx, rank[r_idx, c_idx] - 1].astype(np.int64))).to_pylist()
    truth_rows = [f"{uid[i]},{t}\n" for i, t in zip(r_idx.tolist(), tname, strict=True)]
    return _Chunk(
        users=users,
        events=events,
        truth_rows=truth_rows,
        clicks=int(label.sum()),
        interest_shown=int(hit.sum()),
        interest_clicks=int((hit & (label == 1)).sum()),
    )


def _default_categories(n_tags: int) -> int:
    # ~250 topics for 1M tags, ~11 for 2k: a few hundred at full scale, always a handful.
    return int(np.clip(round(np.sqrt(n_tags) / 4), 4, 500))


def generate_synthetic(
    out: Path,
    *,
    n_tags: int = 1_000_000,
    n_users: int = 100_000,
    n_items: int | None = None,
    events_per_user: int = 100,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    n_categories: int | None = None,
) -> SyntheticReport:
    """Write a synthetic dataset with planted interests into directory `out`.

    Files: `items.parquet`, `events.parquet` (exactly `n_users * events_per_user` rows),
    `users.parquet`, `truth.csv` (`user_id,tag`: planted interests), `tags.parquet` (each tag's
    category, popularity and item count, for checking embedding structure) and `meta.json`
    (parameters, derived sizes and the report). All data files are byte-identical for a given
    seed; only meta.json's timing fields vary.

    `n_items` defaults to `max(1000, n_tags // 2)`, enough tag slots (2.85 per item on
    average) for every tag to occur in some item. `n_categories` defaults to
    `clip(round(sqrt(n_tags) / 4), 4, 500)` (250 for 1M tags). `progress(stage, done, total)`
    is called for stages "items" and "users".
    """
    t0 = time.perf_counter()
    if n_tags < 1 or n_users < 1 or events_per_user < 1:  # before the defaults below are derived from them
        raise ValueError(f"n_tags, n_users and events_per_user must be >= 1, got {n_tags}, {n_users}, {events_per_user}")
    n_items = max(1_000, n_tags // 2) if n_items is None else n_items
    n_categories = _default_categories(n_tags) if n_categories is None else n_categories
    if not 1 <= n_categories <= min(n_tags, n_items):
        raise ValueError(f"need 1 <= n_categories <= min(n_tags, n_items), got {n_categories}")

    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    out = Path(out)
    start_dataset(out)
    paths = {
        name: out / name
        for name in ("items.parquet", "events.parquet", "users.parquet", "truth.csv", "tags.parquet", "meta.json")
    }

    report("items", 0, n_items)
    world = _build_world(np.random.default_rng([seed, 0]), n_tags, n_items, n_categories)
    tag_ids = _ids("t", n_tags)
    item_ids = _ids("i", n_items)
    pq.write_table(_items_table(world, item_ids, tag_ids), paths["items.parquet"], compression="zstd")
    pq.write_table(_tags_table(world, tag_ids), paths["tags.parquet"], compression="zstd")
    report("items", n_items, n_items)

    # Demographic effects: each gender, age bucket and region shifts category preference.
    drng = np.random.default_rng([seed, 1])
    city_w = (np.arange(N_CITIES) + 1.0) ** -CITY_ZIPF
    tilts = (
        drng.normal(0.0, TILT_GENDER, size=(len(GENDERS), n_categories)),
        drng.normal(0.0, TILT_AGE, size=(len(AGES), n_categories)),
        drng.normal(0.0, TILT_REGION, size=(N_REGIONS, n_categories)),
        drng.integers(0, N_REGIONS, size=N_CITIES),
    )

    rows = {"items": n_items, "tags": n_tags, "users": 0, "events": 0, "truth": 0}
    clicks = interest_shown = interest_clicks = 0
    user_width = _width(n_users)
    report("users", 0, n_users)
    with (
        pq.ParquetWriter(paths["events.parquet"], _EVENTS_SCHEMA, compression="zstd") as ev_writer,
        pq.ParquetWriter(paths["users.parquet"], _USERS_SCHEMA, compression="zstd") as user_writer,
        open(paths["truth.csv"], "w", encoding="utf-8", newline="") as truth,
    ):
        truth.write("user_id,tag\n")
        for ci, first in enumerate(range(0, n_users, USER_CHUNK)):
            n = min(USER_CHUNK, n_users - first)
            rng = np.random.default_rng([seed, 2, ci])
            chunk = _user_chunk(
                world, rng, first, n, user_width, events_per_user, city_w / city_w.sum(), tilts, item_ids, tag_ids
            )
            ev_writer.write_table(chunk.events, row_group_size=chunk.events.num_rows)
            user_writer.write_table(chunk.users)
            truth.writelines(chunk.truth_rows)
            rows["users"] += n
            rows["events"] += chunk.events.num_rows
            rows["truth"] += len(chunk.truth_rows)
            clicks += chunk.clicks
            interest_shown += chunk.interest_shown
            interest_clicks += chunk.interest_clicks
            report("users", first + n, n_users)

    ev = max(rows["events"], 1)
    stats = {
        "ctr": round(clicks / ev, 6),
        "interest_impression_share": round(interest_shown / ev, 6),
        "clicks_explained_share": round(interest_clicks / max(clicks, 1), 6),
        "tags_in_items_share": round(float((np.diff(world.tag_ptr) > 0).mean()), 6),
        "mean_tags_per_item": round(len(world.item_tags) / n_items, 6),
    }
    rep = SyntheticReport(
        out=out,
        rows=rows,
        seconds=time.perf_counter() - t0,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        paths=paths,
        stats=stats,
    )
    params = {
        "n_tags": n_tags,
        "n_users": n_users,
        "n_items": n_items,
        "n_categories": n_categories,
        "n_accounts": world.n_accounts,
        "events_per_user": events_per_user,
        "seed": seed,
        "p_click_interest": P_CLICK_INTEREST,
        "p_click_random": P_CLICK_RANDOM,
        "events_start": EVENTS_START,
        "events_span_s": EVENTS_SPAN_S,
    }
    meta = {"generator": "utpm.data.synthetic", "format_version": 1, "params": params, "report": rep.to_dict()}
    paths["meta.json"].write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return rep
