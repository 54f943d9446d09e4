"""The paper's protocol (section 4.1), shared by training and evaluation.

For each user, events are sorted by time (ties by item id). The first `history_fraction` (80%) form
the history from which the feature fields are built; the rest are the label period, whose items
with their tags and labels are the training targets (train users) or the ground truth (test users).
Users are split into train and test by a seeded draw. Users with fewer than two events have no
history or no label period and are left out (counted in `ProtocolSplit.dropped_users`).

Feature fields (names are what the model, export and service call them):
- `clicked_tags`, `clicked_categories`, `clicked_<col>` for each further item column, from label-1
  history items;
- `unclicked_tags` from label-0 history items;
- one single-valued field per column of the users file.

Multi-valued fields keep each value once, at its most recent occurrence, oldest first, and at most
`max_history` values (the most recent ones); the model's max length H truncates further, the same
way (`utpm.features.encoding.recent_unique`). Each kept value also has its count, its occurrences
among all of the selected events (`field_counts`), and for `clicked_tags` the distinct items among
them (`field_items`, which differ from the counts where a user clicked an item more than once): a
request built from the log (`request`) sends a multi-valued field as {value: count}, and a tag whose
items differ from its count as {"count": c, "items": d}: the statistics the default model learnt from.

Storage is columnar (ragged integer arrays over string tables) so that 10M events fit in memory
comfortably; nothing here is per-event Python.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from utpm.data.loading import Dataset
from utpm.features.compiled import compiled
from utpm.features.history import ITEM_FIELD
from utpm.features.item_neighbours import RECENT_ITEMS
from utpm.features.spec import FieldKind


# a request's features: field -> values, or {value: count}
Request = dict[str, list[str] | Mapping[str, int | dict[str, int]]]
# The fields whose values' distinct items a request carries: the default model's history path reads them.
ITEMS_FIELDS = ("clicked_tags",)
# The shape of the requests built from the log (`request`), raised whenever it changes (2: fields with
# counts; 3: a tag's distinct items): what caches them (batch staging, benchmark bodies) rebuilds them.
REQUEST_SHAPE = 3


@dataclass
class Ragged:
    """Per-row lists of codes into `values`: row i is `values[codes[offsets[i]:offsets[i+1]]]`."""

    offsets: np.ndarray  # (n_rows + 1,) int64
    codes: np.ndarray  # (nnz,) int64
    values: np.ndarray  # (n_values,) object (str)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row_codes(self, i: int) -> np.ndarray:
        return self.codes[self.offsets[i] : self.offsets[i + 1]]

    def row(self, i: int) -> list[str]:
        return [str(v) for v in self.values[self.row_codes(i)]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> Ragged:
        """The rows `rows` (indices), in that order; shares `values`."""
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(self.lengths()[rows], out=offsets[1:])
        return Ragged(offsets, self.codes[self.element_index(rows)[1]], self.values)

    def element_index(self, rows: np.ndarray, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(position in `rows`, index into `codes`) of every element of those rows, row by row, in
        order; with `limit`, of each row's first `limit` elements only."""
        rows = np.asarray(rows, np.int64)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        if limit is not None:
            lengths = np.minimum(lengths, limit)
        ends = np.cumsum(lengths)
        # an element's index: its row's start plus its position within the row
        within = np.arange(ends[-1] if len(ends) else 0, dtype=np.int64) - np.repeat(ends - lengths, lengths)
        return np.repeat(np.arange(len(rows), dtype=np.int64), lengths), np.repeat(starts, lengths) + within


def _ragged_from_pairs(row: np.ndarray, codes: np.ndarray, n_rows: int, values: np.ndarray) -> Ragged:
    """Build from (row, code) pairs already grouped by row in the wanted order."""
    counts = np.bincount(row, minlength=n_rows)
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Ragged(offsets, codes.astype(np.int64), values)


def _encode_lists(lists: pd.Series) -> tuple[Ragged, np.ndarray]:
    """A column of list[str] -> Ragged over a sorted string table."""
    lengths = lists.map(len).to_numpy(dtype=np.int64)
    flat = np.fromiter((v for lst in lists for v in lst), dtype=object, count=int(lengths.sum()))
    values, codes = np.unique(flat.astype(str), return_inverse=True) if len(flat) else (np.array([], str), flat)
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    vals = values.astype(object)
    return Ragged(offsets, np.asarray(codes, dtype=np.int64), vals), vals


@dataclass
class ProtocolSplit:
    """Features and labels of every kept user, and which users are test users.

    fields[name]: Ragged over users (row i = user i's values); field_kinds[name]: single or multi.
    labels: Ragged over users whose codes are item indices into `item_tags`; `label_values` is
    aligned with `labels.codes` (0/1). item_tags: Ragged over items (row j = item j's tags, in the
    item's order, most characteristic first for MovieLens).
    """

    user_ids: np.ndarray
    is_test: np.ndarray
    fields: dict[str, Ragged]
    field_kinds: dict[str, FieldKind]
    # per multi-valued field, each kept value's occurrences in the user's history, aligned with its codes
    field_counts: dict[str, np.ndarray]
    labels: Ragged
    label_values: np.ndarray
    item_tags: Ragged
    item_ids: np.ndarray
    history: Ragged
    history_values: np.ndarray
    # each user's distinct clicked history items, oldest first by last click (`_recent_clicked_items`)
    clicked: Ragged
    seed: int
    history_fraction: float
    test_fraction: float
    max_history: int
    dropped_users: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    source: str = ""
    # Every multi-valued item column (tags, categories, ...) as a Ragged over items; the history
    # model counts values per user from these.
    item_columns: dict[str, Ragged] = field(default_factory=dict)
    # per field of ITEMS_FIELDS, each kept value's distinct history items, aligned with its codes
    field_items: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def indices(self, test: bool) -> np.ndarray:
        return np.flatnonzero(self.is_test == test)

    def features(self, i: int) -> dict[str, list[str]]:
        """User i's raw features as value lists, without counts (the paper model's input)."""
        return {name: r.row(i) for name, r in self.fields.items() if r.offsets[i + 1] > r.offsets[i]}

    def counted(self, name: str, i: int) -> dict[str, int]:
        """User i's values of the multi-valued field `name` with their counts, oldest first."""
        return _counted(self.fields[name], self.field_counts[name], i)

    def clicked_items(self, i: int) -> list[str]:
        """The distinct items of user i's label-1 history events, oldest first by last click, the most
        recent `max_items` of `split_protocol`: the request's `clicked_items`."""
        return self.clicked.row(i)

    def request(self, i: int, counts: bool = True, tag_items: bool = True) -> Request:
        """User i's request as docs/serving.md asks a client to send it: each multi-valued field as
        {value: count} (as lists without `counts`), a tag's count with its distinct items where they
        differ (not without `tag_items`: the request of before 2026-12-07), the single-valued ones
        as lists, and the clicked items."""
        distinct = self.field_items if tag_items else {}
        return _request(self.fields, self.field_counts if counts else {}, distinct, self.clicked, i)

    def label_items(self, i: int, max_tags: int | None = None) -> Iterator[tuple[list[str], int]]:
        """(first `max_tags` tags of the item, label) for each label-period event of user i, in time order."""
        lo, hi = self.labels.offsets[i], self.labels.offsets[i + 1]
        for item, value in zip(self.labels.codes[lo:hi], self.label_values[lo:hi], strict=True):
            yield self.item_tags.row(int(item))[:max_tags], int(value)

    def clicked_tags(self, i: int, max_tags: int | None = None) -> set[str]:
        """C_i of the paper's Eq. 5: the tags of user i's label-1 items in the label period.

        `max_tags` is Table 1's N, the number of tags an item has for the model: an item's tags
        beyond its first N are neither trained on nor counted in C.
        """
        return {t for tags, y in self.label_items(i, max_tags) if y == 1 for t in tags}

    def protocol_info(self) -> dict[str, object]:
        return {
            "source": self.source,
            "history_fraction": self.history_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            "users": self.n_users,
            "train_users": int((~self.is_test).sum()),
            "test_users": int(self.is_test.sum()),
            "dropped_users": self.dropped_users,
            "fields": {k: v.value for k, v in self.field_kinds.items()},
            **self.stats,
        }

    def differences(self, recorded: Mapping[str, Any]) -> list[str]:
        """How this split differs from the one a run recorded (its config.json "protocol"), the data's
        path aside: ["users 609 then, 299 now", ...]; empty when the users and their test split match."""
        now = self.protocol_info()
        return [f"{k} {v!r} then, {now.get(k)!r} now" for k, v in recorded.items() if k != "source" and now.get(k) != v]


def _occurrences(user_idx: np.ndarray, item_idx: np.ndarray, item_values: Ragged) -> tuple[np.ndarray, np.ndarray]:
    """(user, value code) of every value of the given items, in the events' order."""
    lengths = item_values.lengths()[item_idx]
    starts = item_values.offsets[item_idx]
    total = int(lengths.sum())
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(user_idx, lengths), item_values.codes[np.repeat(starts, lengths) + within]


def _history_field(ev_user: np.ndarray, codes: np.ndarray, values: np.ndarray, n_users: int, max_history: int) -> Ragged:
    """Per-user recent-unique values of the occurrences (user, value code) (`_occurrences`; grouped by
    user, in time order within a user) over the value table `values`."""
    keep = _recent_unique(ev_user, codes, len(values), max_history)
    return _ragged_from_pairs(ev_user[keep], codes[keep], n_users, values)


def _value_counts(field: Ragged, ev_user: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each value of `field` (`_history_field` of the same occurrences): how often it occurs among its
    user's, aligned with `field.codes`."""
    return _counts_of(ev_user, codes, field.offsets, field.codes, len(field.values))


# Compiled, and linear in the occurrences with one slot per value: at 20M events the pandas and
# np.unique forms held several arrays of every occurrence (docs/pipeline.md, the split's memory).
@compiled
def _recent_unique(ev_user, codes, n_values, max_history):
    """Which occurrences are kept: each user's most recent one of each value, the `max_history` most
    recent values per user (occurrences grouped by user, in time order within a user)."""
    seen = np.full(n_values, -1, np.int64)  # the last user (in reverse order) each value was kept for
    keep = np.zeros(len(codes), np.bool_)
    user, kept = -1, 0
    for j in range(len(codes) - 1, -1, -1):
        if ev_user[j] != user:
            user, kept = ev_user[j], 0
        c = codes[j]
        if kept < max_history and seen[c] != user:
            seen[c] = user
            keep[j] = True
            kept += 1
    return keep


@compiled
def _first_of_each_item(ev_user, item_idx, n_items):
    """Which events are their user's first of their item (events grouped by user)."""
    seen = np.full(n_items, -1, np.int64)  # the last user whose event of the item was kept
    keep = np.zeros(len(item_idx), np.bool_)
    for j in range(len(item_idx)):
        if seen[item_idx[j]] != ev_user[j]:
            seen[item_idx[j]] = ev_user[j]
            keep[j] = True
    return keep


@compiled
def _counts_of(ev_user, codes, offsets, field_codes, n_values):
    """For each user's field values (`field_codes[offsets[u] : offsets[u + 1]]`), how often it occurs
    among that user's occurrences (grouped by user)."""
    count = np.zeros(n_values, np.int64)
    out = np.zeros(len(field_codes), np.int64)
    j = 0
    while j < len(codes):
        user, lo = ev_user[j], j
        while j < len(codes) and ev_user[j] == user:
            count[codes[j]] += 1
            j += 1
        for x in range(offsets[user], offsets[user + 1]):
            out[x] = count[field_codes[x]]
        for i in range(lo, j):
            count[codes[i]] = 0
    return out


def split_protocol(
    data: Dataset,
    *,
    seed: int = 0,
    history_fraction: float = 0.8,
    test_fraction: float = 0.2,
    max_history: int = 100,
    max_items: int = RECENT_ITEMS,
) -> ProtocolSplit:
    """Apply the paper's protocol to `data` (see the module docstring)."""
    if not 0.0 < history_fraction < 1.0:
        raise ValueError(f"history_fraction must be in (0, 1), got {history_fraction}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    items = data.items
    ev, user_codes, user_ids = _sorted_events(data)
    n = np.bincount(user_codes)
    n_hist = np.floor(n * history_fraction).astype(np.int64)
    kept_user = (n_hist >= 1) & (n - n_hist >= 1)
    dropped = int((~kept_user).sum())
    # renumber kept users 0..n_kept-1
    new_id = np.full(len(n), -1, dtype=np.int64)
    new_id[kept_user] = np.arange(int(kept_user.sum()))
    ev_user = new_id[user_codes]
    pos = ev.groupby(user_codes, sort=False).cumcount().to_numpy()
    ev_hist = pos < n_hist[user_codes]
    valid = ev_user >= 0
    user_ids = np.asarray(user_ids, dtype=object)[kept_user]
    n_users = len(user_ids)
    item_idx = pd.Index(items["item_id"]).get_indexer(ev["item_id"])
    label = ev["label"].to_numpy()
    item_lists = {c: _encode_lists(items[c])[0] for c in items.columns if c != "item_id"}
    hist = valid & ev_hist
    fields, kinds, counts, distinct = _feature_fields(
        data, user_ids, ev_user, item_idx, label, hist, item_lists, max_history
    )
    lab = valid & ~ev_hist
    item_id_table = np.asarray(items["item_id"], dtype=object)
    labels = _ragged_from_pairs(ev_user[lab], item_idx[lab], n_users, item_id_table)
    history = _ragged_from_pairs(ev_user[hist], item_idx[hist], n_users, item_id_table)
    hist_clicks = hist & (label == 1)
    clicked = _recent_clicked_items(ev["item_id"].to_numpy()[hist_clicks], ev_user[hist_clicks], n_users, max_items)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(n_users, dtype=bool)
    n_test = round(n_users * test_fraction)
    is_test[rng.permutation(n_users)[:n_test]] = True
    return ProtocolSplit(
        user_ids=user_ids,
        is_test=is_test,
        fields=fields,
        field_kinds=kinds,
        field_counts=counts,
        labels=labels,
        label_values=label[lab].astype(np.int8),
        item_tags=item_lists["tags"],
        item_ids=item_id_table,
        history=history,
        history_values=label[hist].astype(np.int8),
        clicked=clicked,
        seed=seed,
        history_fraction=history_fraction,
        test_fraction=test_fraction,
        max_history=max_history,
        dropped_users=dropped,
        stats={"history_events": int(hist.sum()), "label_events": int(lab.sum())},
        source=data.source,
        item_columns=item_lists,
        field_items=distinct,
    )


def _sorted_events(data: Dataset) -> tuple[pd.DataFrame, np.ndarray, Any]:
    """The events by user, then time (ties by item id); each event's user code and the user ids."""
    ev = data.events.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)
    user_codes, user_ids = pd.factorize(ev["user_id"], sort=True)
    return ev, user_codes, user_ids


def _feature_fields(
    data: Dataset,
    user_ids: np.ndarray,
    ev_user: np.ndarray,
    item_idx: np.ndarray,
    label: np.ndarray,
    sel: np.ndarray,
    item_lists: dict[str, Ragged],
    max_history: int,
) -> tuple[dict[str, Ragged], dict[str, FieldKind], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The feature fields (module docstring) of `user_ids` from the events selected by `sel`, each
    event's user row in `ev_user`, its item row in `item_idx`; their kinds; the multi-valued fields'
    counts and the `ITEMS_FIELDS`' distinct items, aligned with their codes."""
    n_users = len(user_ids)
    fields: dict[str, Ragged] = {}
    kinds: dict[str, FieldKind] = {}
    counts: dict[str, np.ndarray] = {}
    distinct: dict[str, np.ndarray] = {}
    multi = [(f"clicked_{c}", lists, sel & (label == 1)) for c, lists in item_lists.items()]
    multi.append(("unclicked_tags", item_lists["tags"], sel & (label == 0)))
    for name, lists, s in multi:
        occurrences = _occurrences(ev_user[s], item_idx[s], lists)  # expanded once for both
        fields[name] = _history_field(*occurrences, lists.values, n_users, max_history)
        counts[name] = _value_counts(fields[name], *occurrences)
        if name in ITEMS_FIELDS:  # the same, counting each user's item once
            once = _first_of_each_item(ev_user[s], item_idx[s], len(lists))
            distinct[name] = _value_counts(fields[name], *_occurrences(ev_user[s][once], item_idx[s][once], lists))
        kinds[name] = FieldKind.MULTI
    if data.users is not None:
        users = data.users.set_index("user_id").reindex(pd.Index(user_ids))
        for c in data.user_fields:
            col = users[c].fillna("").astype(str)
            present = col.to_numpy() != ""
            values, codes = np.unique(col.to_numpy()[present].astype(str), return_inverse=True)
            rows = np.flatnonzero(present)
            fields[c] = _ragged_from_pairs(rows, codes, n_users, values.astype(object))
            kinds[c] = FieldKind.SINGLE
    return fields, kinds, counts, distinct


@dataclass
class CurrentFeatures:
    """Every user's feature fields from all of their events (`current_features`)."""

    user_ids: np.ndarray
    fields: dict[str, Ragged]
    field_counts: dict[str, np.ndarray]  # as `ProtocolSplit.field_counts`
    # each user's distinct clicked items, oldest first by last click (the most recent `max_items`): the
    # request's `clicked_items`
    items: Ragged
    field_items: dict[str, np.ndarray] = field(default_factory=dict)  # as `ProtocolSplit.field_items`

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def features(self, i: int) -> dict[str, list[str]]:
        """User i's feature fields."""
        return {name: r.row(i) for name, r in self.fields.items() if r.offsets[i + 1] > r.offsets[i]}

    def request(self, i: int) -> Request:
        """User i's request, as `ProtocolSplit.request` builds it."""
        return _request(self.fields, self.field_counts, self.field_items, self.items, i)


def _counted(field: Ragged, counts: np.ndarray, i: int) -> dict[str, int]:
    lo, hi = field.offsets[i], field.offsets[i + 1]
    return dict(zip(field.row(i), counts[lo:hi].tolist(), strict=True))


def _request(
    fields: Mapping[str, Ragged],
    counts: Mapping[str, np.ndarray],
    distinct: Mapping[str, np.ndarray],
    items: Ragged,
    i: int,
) -> Request:
    """User i's fields ({value: count} where counted, a value's count {"count": c, "items": d} where its
    distinct items d are known and differ from c, else a list) and clicked items, those present."""
    out: Request = {}
    for name, r in fields.items():
        if r.offsets[i + 1] <= r.offsets[i]:
            continue
        if name not in counts:
            out[name] = r.row(i)
        elif name in distinct:
            lo, hi = r.offsets[i], r.offsets[i + 1]
            cs, ds = counts[name][lo:hi].tolist(), distinct[name][lo:hi].tolist()
            out[name] = {v: c if c == d else {"count": c, "items": d} for v, c, d in zip(r.row(i), cs, ds, strict=True)}
        else:
            out[name] = _counted(r, counts[name], i)
    clicked = items.row(i)
    if clicked:
        out[ITEM_FIELD] = clicked
    return out


def current_features(data: Dataset, max_history: int = 100, max_items: int = RECENT_ITEMS) -> CurrentFeatures:
    """Every user's feature fields built as the protocol builds them, but from all of the user's events:
    what a profile for serving is computed from. The protocol's cut (`split_protocol`) is for
    evaluation: it keeps each user's most recent fifth of events as labels, out of the features, and
    leaves out users with a single event. Users of the users table without an event come last, with
    their own columns only (a new user's profile from what is known of them; one whose columns are all
    empty has nothing to be profiled from and is left out)."""
    ev, user_codes, event_users = _sorted_events(data)
    user_ids = np.asarray(event_users, dtype=object)
    if data.users is not None:
        known = set(user_ids.tolist())
        described = (data.users[data.user_fields].fillna("").astype(str) != "").any(axis=1)
        new = [u for u in data.users.loc[described, "user_id"].tolist() if u not in known]
        user_ids = np.concatenate([user_ids, np.asarray(list(dict.fromkeys(new)), dtype=object)])
    items = data.items
    item_idx = pd.Index(items["item_id"]).get_indexer(ev["item_id"])
    item_lists = {c: _encode_lists(items[c])[0] for c in items.columns if c != "item_id"}
    every = np.ones(len(ev), dtype=bool)
    label = ev["label"].to_numpy()
    fields, _, counts, distinct = _feature_fields(
        data, user_ids, user_codes, item_idx, label, every, item_lists, max_history
    )
    clicks = label == 1
    clicked = _recent_clicked_items(ev["item_id"].to_numpy()[clicks], user_codes[clicks], len(user_ids), max_items)
    return CurrentFeatures(user_ids, fields, counts, clicked, distinct)


def _recent_clicked_items(item_ids: np.ndarray, users: np.ndarray, n_users: int, max_items: int) -> Ragged:
    """Each user's distinct items of the clicks given (item id and user of each, sorted by user, then
    time), oldest first by last click, the most recent `max_items` of them, as each field keeps its
    values (`_history_field`)."""
    ids, codes = np.unique(item_ids.astype(str), return_inverse=True)
    return _history_field(users, codes, ids.astype(object), n_users, max_items)  # an item is its one value


def clicked_items_tag_counts(data: Dataset) -> np.ndarray:
    """The number of tags of the item of each label-1 event whose item has tags."""
    n_tags = data.items["tags"].map(len).to_numpy()
    clicked = data.events.loc[data.events["label"] == 1, "item_id"]
    counts = n_tags[pd.Index(data.items["item_id"]).get_indexer(clicked)]
    return counts[counts > 0]


def clicks_per_user(data: Dataset) -> pd.Series:
    """The number of label-1 events of each user, most first."""
    return data.events.loc[data.events["label"] == 1, "user_id"].value_counts()


def train_val_rows(split: ProtocolSplit, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) exactly as the trainers draw them from the split's training users.

    The first draw of `default_rng(seed)` permutes the training users and the first
    round(n * val_fraction) (at least 1) are validation users; the yardsticks use this too, so models
    and yardsticks see the same training rows.
    """
    perm = np.random.default_rng(seed).permutation(split.indices(test=False))
    n_val = max(1, round(len(perm) * val_fraction)) if val_fraction > 0 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
