"""HistoryEncoder.encode (the whole batch at once) gives, bit for bit, what the old per-user encoder gave.

The oracle is `reference_history` (the encoder as of commit 900f092, user by user, with its per-tag-dict
fallback). Random and fuzzed users: repeated values and tag ids, tied and zero counts, unknown and
reserved tokens, missing, empty and over-long fields, several values in a single field; encoders with
and without tag statistics, with few and with many candidate slots, without the unclicked field, without
the clicked field; every batch split.
"""

from __future__ import annotations

import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
import pytest

from tests.utpm.features.reference_history import reference_encode, reference_stats_from_sequence
from utpm.data.loading import split_list
from utpm.features import history
from utpm.features import vocab as vocab_module
from utpm.features.encoding import FeatureEncoder
from utpm.features.history import (
    TAG_FIELD,
    UNCLICKED_FIELD,
    FieldStats,
    HistoryBatch,
    HistoryEncoder,
    TagStats,
    parse_field,
    stats_from_sequence,
)
from utpm.features.spec import FieldKind, FieldSpec
from utpm.features.values import clean_values
from utpm.features.vocab import OOV_TOKEN, PAD_TOKEN, Vocabulary

N_TAGS = 60  # small, so that users share tags and transitions collide


def _vocab(prefix: str, n: int) -> Vocabulary:
    return Vocabulary([PAD_TOKEN, OOV_TOKEN] + [f"{prefix}{i}" for i in range(n)])


def _tag_stats(rng: np.random.Generator, n_tags: int, ties: bool) -> TagStats:
    """Random CSR transitions (t != h), with lifts from a few values when `ties` (equal scores)."""
    indptr = [0]
    indices: list[int] = []
    lift: list[float] = []
    for h in range(n_tags):
        deg = 0 if h < 2 else int(rng.integers(0, 12))
        nb = [t for t in rng.choice(np.arange(2, n_tags), size=min(deg, n_tags - 2), replace=False) if t != h]
        indices += nb
        lift += list(rng.choice([0.25, 0.5, 1.0], len(nb)) if ties else rng.uniform(0.01, 2.0, len(nb)))
        indptr.append(len(indices))
    return TagStats(
        indptr=np.asarray(indptr, np.int64),
        indices=np.asarray(indices, np.int32),
        lift=np.asarray(lift, np.float32),
        repeat=rng.normal(size=n_tags).astype(np.float32),
        label_rate=rng.normal(size=n_tags).astype(np.float32),
        popular=rng.choice(np.arange(2, n_tags), size=15, replace=False).astype(np.int32),
    )


def _encoder(
    stats: TagStats | None,
    max_history_tags: int,
    extra: int,
    fields: tuple[str, ...] = (TAG_FIELD, UNCLICKED_FIELD, "clicked_categories", "gender"),
    h: int = 8,
) -> HistoryEncoder:
    tags = _vocab("t", N_TAGS - 2)
    vocabs = {TAG_FIELD: tags, UNCLICKED_FIELD: tags, "clicked_categories": _vocab("c", 7), "gender": _vocab("g", 2)}
    specs = [
        FieldSpec(n, FieldKind.SINGLE if n == "gender" else FieldKind.MULTI, len(vocabs[n]), 1 if n == "gender" else h)
        for n in fields
    ]
    return HistoryEncoder(FeatureEncoder(specs, {n: vocabs[n] for n in fields}), tags, max_history_tags, stats, extra)


def _values(rnd: random.Random, field: str, n: int) -> list[str]:
    pool = {TAG_FIELD: "t", UNCLICKED_FIELD: "t", "clicked_categories": "c", "gender": "g"}[field]
    size = {"t": N_TAGS - 2, "c": 7, "g": 2}[pool]
    out = []
    for _ in range(n):
        r = rnd.random()
        if r < 0.08:
            out.append(f"never-seen-{rnd.randrange(5)}")
        elif r < 0.1:
            out.append(rnd.choice([PAD_TOKEN, OOV_TOKEN]))
        else:
            out.append(f"{pool}{rnd.randrange(size)}")
    return out


def _field(rnd: random.Random, field: str) -> FieldStats | None:
    """One field of a random user, built as a request, as training or by hand (repeated values allowed)."""
    n = rnd.choice([0, 1, 2, 3, 5, 9, 14, 30])
    kind = rnd.randrange(6)
    values = _values(rnd, field, n)
    if kind == 0:
        return None
    if kind == 1:
        return parse_field(field, values)
    if kind == 2:
        raw = {v: rnd.choice([0, 0.5, 1, 1, 2, 3, 7.25, 1e30]) for v in values}
        return parse_field(field, raw)
    if kind == 3:
        return stats_from_sequence(values, [rnd.randrange(4) for _ in values])
    # by hand: values may repeat (two values, one tag id), counts tie or are 0
    pick = [0.0, 1.0, 1.0, 2.0, 3.0, 0.5]
    return FieldStats(
        values=values,
        count=[rnd.choice(pick) for _ in values],
        distinct=[rnd.choice(pick) for _ in values],
        recency=[rnd.choice([0.0, 0.25, 0.5, 1.0, rnd.random()]) for _ in values],
    )


def _users(seed: int, n: int) -> list[dict[str, FieldStats]]:
    rnd = random.Random(seed)
    users = []
    for _ in range(n):
        user = {}
        for name in (TAG_FIELD, UNCLICKED_FIELD, "clicked_categories", "gender"):
            st = _field(rnd, name)
            if st is not None:
                user[name] = st
        users.append(user)
    return users


def _same(a: HistoryBatch, b: HistoryBatch) -> None:
    """Equal to the bit (float arrays compared as integers: -0.0 is not 0.0)."""

    def bits(x: np.ndarray) -> np.ndarray:
        return x.view(np.int32) if x.dtype == np.float32 else x

    for name in ("ids", "masks", "counts"):
        for x, y in zip(getattr(a, name), getattr(b, name), strict=True):
            assert x.dtype == y.dtype and np.array_equal(bits(x), bits(y)), name
    for name in ("hist_ids", "hist_feats", "hist_mask"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(bits(x), bits(y)), name
    assert a.unknown == b.unknown
    assert [list(u) for u in a.unknown] == [list(u) for u in b.unknown]  # the fields' order too


ENCODERS: dict[str, dict[str, Any]] = {
    "stats, ties": dict(stats="ties", max_history_tags=12, extra=6),
    "stats, many slots": dict(stats="plain", max_history_tags=40, extra=30),
    "stats, one history tag": dict(stats="plain", max_history_tags=1, extra=3),
    "stats, no extra": dict(stats="ties", max_history_tags=5, extra=0),
    "no stats": dict(stats=None, max_history_tags=7, extra=0),
    "no unclicked field": dict(stats="plain", max_history_tags=9, extra=5, fields=(TAG_FIELD, "gender")),
    "no clicked field": dict(stats="ties", max_history_tags=9, extra=5, fields=(UNCLICKED_FIELD, "gender")),
    "long fields": dict(stats="plain", max_history_tags=1000, extra=100, h=100),
}


@pytest.mark.parametrize("name", list(ENCODERS))
def test_batch_encode_is_bit_identical_to_the_per_user_encoder(name: str) -> None:
    _check_against_the_per_user_encoder(name)


@pytest.mark.parametrize("name", ["stats, ties", "no clicked field"])
def test_batch_encode_through_the_hashed_vocabulary_lookups_is_bit_identical(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every vocabulary looked up through the compiled hash table (large vocabularies' way)."""
    monkeypatch.setattr(vocab_module, "HASHED_MIN_TOKENS", 0)
    _check_against_the_per_user_encoder(name)


def _check_against_the_per_user_encoder(name: str) -> None:
    cfg = dict(ENCODERS[name])
    rng = np.random.default_rng(len(name))
    kind = cfg.pop("stats")
    stats = None if kind is None else _tag_stats(rng, N_TAGS, ties=kind == "ties")
    henc = _encoder(stats, int(cfg.pop("max_history_tags")), int(cfg.pop("extra")), **cfg)
    users = _users(len(name), 240)
    expected = [reference_encode(henc, [u]) for u in users]
    for size in (1, 3, 8, 64, len(users)):
        for lo in range(0, len(users), size):
            got = henc.encode(users[lo : lo + size])
            for j, one in enumerate(expected[lo : lo + size]):
                row = HistoryBatch(
                    [x[j : j + 1] for x in got.ids],
                    [x[j : j + 1] for x in got.masks],
                    [x[j : j + 1] for x in got.counts],
                    got.hist_ids[j : j + 1],
                    got.hist_feats[j : j + 1],
                    got.hist_mask[j : j + 1],
                    got.unknown[j : j + 1],
                )
                _same(row, one)


def test_the_kernel_stays_in_bounds_on_every_oracle_case(tmp_path: Path) -> None:
    """numba checks no index unless told to: an index out of bounds in the kernel would read or write
    past an array without an error. The oracle's cases again in a fresh process with NUMBA_BOUNDSCHECK=1
    (and a cache of its own, so the checked kernel is compiled), where it raises IndexError instead."""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    here = Path(__file__)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    cmd += [f"{here}::test_batch_encode_is_bit_identical_to_the_per_user_encoder"]
    cmd += [f"{here}::test_a_user_with_only_unclicked_tags_or_nothing_known_gets_the_old_candidates"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=here.parents[3], check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"{len(ENCODERS) + 1} passed" in done.stdout


def test_a_user_with_only_unclicked_tags_or_nothing_known_gets_the_old_candidates() -> None:
    """The share-0 shortcut: a user whose clicked tags propose fewer new tags than there are slots gets
    the unclicked tags' neighbours (score 0) as the old encoder did; a user with nothing gets the popular tags."""
    stats = _tag_stats(np.random.default_rng(3), N_TAGS, ties=True)
    henc = _encoder(stats, 20, 40)
    users = [
        {UNCLICKED_FIELD: parse_field(UNCLICKED_FIELD, ["t3", "t4", "t5"])},
        {TAG_FIELD: parse_field(TAG_FIELD, ["t9"]), UNCLICKED_FIELD: parse_field(UNCLICKED_FIELD, ["t3", "t4"])},
        {TAG_FIELD: parse_field(TAG_FIELD, ["never-seen"])},
        {},
    ]
    _same(henc.encode(users), reference_encode(henc, users))
    _same(henc.encode([]), reference_encode(henc, []))  # no users (an empty validation split)


def test_stats_from_sequence_is_bit_identical_to_the_per_occurrence_loop() -> None:
    """Values, counts, distinct items and recency sums to the bit, with and without item ids, from
    the empty list to histories longer than the weights' cache (1,024)."""
    rnd = random.Random(3)
    for trial in range(400):
        n = rnd.choice([0, 1, 2, 5, 30, 200, 1500]) if trial % 10 else rnd.randrange(0, 12)
        pool = [f"v{i}" for i in range(rnd.choice([1, 3, 20, 5000]))]
        seq = [rnd.choice(pool) for _ in range(n)]
        items = [rnd.randrange(1 + n // 3) for _ in seq] if trial % 2 else None
        assert stats_from_sequence(seq, items) == reference_stats_from_sequence(seq, items), (n, len(pool), items)


def test_log1p_of_whole_numbers_from_the_table_and_of_the_rest_is_math_log1p_to_the_bit() -> None:
    rng = np.random.default_rng(0)
    whole = np.arange(0, 5000, dtype=np.float64)  # across the table's end
    rest = np.concatenate([rng.random(300) * 50, [-0.0, 0.5, 4095.0, 4096.0, 1e6, 2.0**40, 1e300, 1e-300]])
    for x in (whole, rest, np.concatenate([whole[:100], rest]), np.zeros(0)):
        got = history._log1p(x)
        want = np.array([math.log1p(v) for v in x.tolist()], np.float64)
        assert got.dtype == np.float64 and got.tobytes() == want.tobytes()


def test_the_kernel_runs_without_the_gil_and_compiles_where_numba_cannot_cache() -> None:
    """nogil is the kernel's point (the service's event loop runs meanwhile); a function numba cannot
    cache (here: no source file, as on a read-only install) is compiled uncached instead of failing."""
    from utpm.features import history_kernel

    assert history_kernel.candidates.targetoptions["nogil"] is True
    scope: dict[str, Any] = {}
    exec("def twice(x):\n    return 2 * x\n", scope)
    with pytest.raises(RuntimeError, match="cannot cache"):
        numba.njit(cache=True)(scope["twice"])
    twice = history_kernel.compiled(scope["twice"])
    assert twice(21) == 42 and twice.targetoptions["nogil"] is True


@pytest.mark.parametrize("name", ["stats, ties", "no stats", "no clicked field"])
def test_compile_kernel_compiles_what_a_real_encoder_calls(name: str) -> None:
    """The images compile the kernel at build with `compile_kernel` and the engine at load: a real
    encoder's batch must then find its compiled version, not compile another for other argument types."""
    from utpm.features import history_kernel

    cfg = dict(ENCODERS[name])
    kind = cfg.pop("stats")
    stats = None if kind is None else _tag_stats(np.random.default_rng(0), N_TAGS, ties=kind == "ties")
    henc = _encoder(stats, int(cfg.pop("max_history_tags")), int(cfg.pop("extra")), **cfg)
    history.compile_kernel()
    compiled = len(history_kernel.candidates.signatures)
    henc.encode(_users(1, 9))
    assert len(history_kernel.candidates.signatures) == compiled == 1


def test_request_values_follow_the_event_logs_rule_stripped_and_empty_ones_absent() -> None:
    """What the loader does to every value of the data (`split_list`: strip, drop empties), a request's
    values get too; in the object form two keys that strip to one value add their counts."""
    assert split_list(pd.Series([" a| b |  |a "]))[0] == clean_values([" a", " b ", "  ", "a "]) == ["a", "b", "a"]
    assert parse_field("f", [" a", "b ", " ", "a"]) == parse_field("f", ["a", "b", "a"])
    assert parse_field("f", " a ") == parse_field("f", "a") and parse_field("f", "  ") == FieldStats()
    assert parse_field("f", {" a ": 2, "b": 1, "": 5}) == parse_field("f", {"a": 2, "b": 1})
    merged = parse_field("f", {"a": 2.0, "b": 1.0, " a": 3.0})
    w = history.recency_weights(3)
    assert merged.values == ["b", "a"] and merged.count == merged.distinct == [1.0, 5.0]
    assert merged.recency == [w[1], 2.0 * w[0] + 3.0 * w[2]]
    assert parse_field("f", {"a": 9e5, " a": 9e5}).count == [history.COUNT_CAP]


def test_a_counted_object_is_parsed_as_the_pair_by_pair_merge_to_the_bit() -> None:
    """`{value: count}` as the log's requests send it takes whole-array operations (`_counted_as_sent`);
    the pair-by-pair merge stays the reference, and what the fast form does not cover (unstripped or
    empty keys, zero, huge or bad counts) still goes through it."""

    def merged(raw: dict[str, Any]) -> FieldStats:
        pairs = [(k.strip(), history._as_count("f", k, c)) for k, c in raw.items()]
        triples = [(k, c, c) for k, c in pairs if c > 0 and k]
        return history._merged(triples, history.recency_weights(len(triples)))

    rnd = random.Random(5)
    counts = [1, 2, 3, 7, 10**7, 10**400, 0.5, 2.25, 1e30, 1e300, 0, 0.0]
    for trial in range(500):
        n = rnd.choice([1, 2, 5, 40, 100, 1100])
        keys = [f"v{i}" if trial % 7 else rnd.choice(["v", " v", "v ", "", f"w{i}"]) for i in range(n)]
        raw = {k: rnd.choice(counts if trial % 3 else counts[:10]) for k in keys}
        assert parse_field("f", raw) == merged(raw), raw
    for bad in ({"a": 1, "b": "2"}, {"a": True}, {"a": -1}, {"a": -(10**400)}, {"a": math.nan}, {"a": math.inf}):
        with pytest.raises(ValueError, match="the count of"):
            parse_field("f", bad)


def test_a_count_with_its_items_is_parsed_as_the_merge_of_count_item_triples_to_the_bit() -> None:
    """A value's count may be {"count": c, "items": d} (d: the distinct items that carried it, 0 < d <= c);
    the fast form gives the merge's results, which take d = c for a bare count, add both for keys that
    strip to one value, and name a bad one."""

    def merged(raw: dict[str, Any]) -> FieldStats:
        triples = [(k.strip(), *history._as_counts("f", k, c)) for k, c in raw.items()]
        triples = [(k, c, d) for k, c, d in triples if c > 0 and k]
        return history._merged(triples, history.recency_weights(len(triples)))

    rnd = random.Random(7)
    for trial in range(500):
        n = rnd.choice([1, 2, 5, 40, 100])
        raw: dict[str, Any] = {}
        for i in range(n):
            c = rnd.choice([1, 2, 3, 7, 2.5, 10**7, 0])
            key = f"v{i}" if trial % 5 else rnd.choice(["v", " v", f"w{i}"])
            if rnd.random() < 0.5 and c:
                d = rnd.choice([1, c, max(1, c // 2), 0.5])
                raw[key] = {"count": c, "items": min(d, c)} if rnd.random() < 0.8 else {"items": min(d, c), "count": c}
            else:
                raw[key] = {"count": c} if rnd.random() < 0.2 else c
        assert parse_field("f", raw) == merged(raw), raw
    # above the cap, both are bounded as a count is, so that items <= count still holds
    assert parse_field("f", {"a": {"count": 5e6, "items": 3e6}}).distinct == [history.COUNT_CAP]
    got = parse_field("f", {"a": {"count": 4, "items": 2}, "b": 3, " a": {"count": 1}})
    assert got.values == ["b", "a"] and got.count == [3.0, 5.0] and got.distinct == [3.0, 3.0]
    for bad, named in (
        ({"a": {"count": 2, "items": 3}}, "at most its count 2"),
        ({"a": {"count": 2, "items": 0}}, "above 0"),
        ({"a": {"count": 2, "items": "1"}}, "the items of 'a' must be a number"),
        ({"a": {"count": 2, "items": math.nan}}, "above 0"),
        ({"a": {"count": 1e300, "items": math.inf}}, "above 0"),
        ({"a": {"items": 1}}, 'an object {"count": c, "items": d}'),
        ({"a": {"count": 1, "item": 1}}, 'an object {"count": c, "items": d}'),
        ({"a": {"count": -1, "items": 1}}, "the count of"),
    ):
        with pytest.raises(ValueError, match=re.escape(named)):
            parse_field("f", bad)


def test_without_distinct_items_a_tags_distinct_items_are_its_count_also_after_the_bundle_round_trip() -> None:
    """`distinct_items=False` (an ablation): phi's log1p_distinct_items takes the count, the flag
    travels in the exported arrays, and an encoder with it on reads the items."""
    on = _encoder(None, 50, 0)
    off = HistoryEncoder(on.encoder, on.tags, 50, distinct_items=False)
    back = HistoryEncoder.from_arrays(on.encoder, on.tags, 50, off.to_arrays())
    user = {TAG_FIELD: FieldStats(values=["t1", "t2"], count=[4.0, 1.0], distinct=[2.0, 1.0], recency=[1.0, 0.5])}
    col = history.PHI_NAMES.index("log1p_distinct_items")
    got = {
        name: enc.encode([user]).hist_feats[0, :2, col].tolist()
        for name, enc in (("on", on), ("off", off), ("back", back))
    }
    assert got["on"] == pytest.approx([math.log1p(2.0), math.log1p(1.0)])
    assert got["off"] == got["back"] == pytest.approx([math.log1p(4.0), math.log1p(1.0)])
    assert "distinct_items" not in on.to_arrays() and back.distinct_items is False
