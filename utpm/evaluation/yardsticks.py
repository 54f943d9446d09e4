"""Three honest non-neural yardsticks the paper omits.

- `mostpop`: tags ranked by how often they occur among training labels (tags of training users'
  label-1 items). Everyone gets the same list.
- `histfreq`: the user's own history tags (of label-1 history items) ranked by frequency, ties by
  popularity, back-filled by `mostpop`.
- `blend`: log1p(popularity) + a * log1p(history count) + c * log1p(distinct history items with the
  tag), with a, c and what the popularity counts (`POPULARITY_COUNTS`) chosen on the validation users
  (`tune_blend`): the bar a model that claims to learn the user must clear.

And two references that are not yardsticks, only where the data has planted interests (synthetic
data, `truth.csv`): `planted-first`, the blend's ranking with the test user's planted interests moved
to the front (in the blend's order), and `planted-seen-first`, the same with only the planted
interests among the user's history tags moved. They read the truth of the users they rank, so no
model is asked to beat them: they say what knowing every user's interests exactly would add to the
blend, and how much of that a better ranking of the tags the history already shows could reach.

Every yardstick reads an item's first N tags (Table 1's N) for popularity, C and the user's history
alike, as the default model does; with `HistoryOptions.all_item_tags` the model's features count
every tag of an item and the yardsticks still the first N (docs/results.md, "Every tag of an
item"). Every yardstick is given the same training rows as the models
(`utpm.data.protocol.train_val_rows`) and breaks ties as the models do (`utpm.ranking`): by the
tag's frequency among the training users' events, then its name (`tag_order`, the order of the
models' tag ids). A model that does not beat these is not learning the user.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from utpm.data.protocol import ProtocolSplit, Ragged

YARDSTICKS = ("mostpop", "histfreq", "blend")
PLANTED = "planted-first"
PLANTED_SEEN = "planted-seen-first"
ORACLES = (PLANTED, PLANTED_SEEN)  # read the test users' planted interests
# every row of an experiment that is not a model
REFERENCES = (*YARDSTICKS, *ORACLES)
BLEND_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
# What a tag's popularity counts: the training users' label-1 items carrying it, or the training users
# whose C holds it. The second is the constant ranking Prec@K rewards and one heavy user (a crawler, a
# shared account) cannot swamp it; which ranks better is data's to say, so the blend tunes it.
POPULARITY_COUNTS = ("events", "users")


class Blend(NamedTuple):
    """The blend's weights and the popularity its log1p(popularity) counts."""

    a: float
    c: float
    popularity: str = "events"


def tag_order(split: ProtocolSplit, train_rows: np.ndarray, max_tags: int | None) -> dict[str, int]:
    """tag -> its place by descending frequency among the training users' events (history and label
    period, label 0 or 1, first `max_tags` tags of each item), ties by name: the order of the default
    model's tag ids (`build_history_vocabularies`), so that yardsticks and models break ties alike."""
    n_values = len(split.item_tags.values)
    counts = np.zeros(n_values, np.int64)
    for events in (split.history, split.labels):
        counts += np.bincount(_event_tags(split, events, train_rows, max_tags)[1], minlength=n_values)
    seen = np.flatnonzero(counts)
    names = split.item_tags.values[seen].astype(str)
    ranked = seen[np.lexsort((names, -counts[seen]))]
    return {str(t): r for r, t in enumerate(split.item_tags.values[ranked])}


def _event_tags(
    split: ProtocolSplit, events: Ragged, rows: np.ndarray, max_tags: int | None, label_1: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(position in `rows`, tag code into `split.item_tags.values`) of each tag of each event of
    `events` (the history or the labels) of users `rows`, an item's first `max_tags` tags; with
    `label_1`, label-1 label events only."""
    user, at = events.element_index(rows)
    if label_1:
        positive = split.label_values[at] == 1
        user, at = user[positive], at[positive]
    event, tag_at = split.item_tags.element_index(events.codes[at], max_tags)
    return user[event], split.item_tags.codes[tag_at]


def _tie_key(order: dict[str, int]) -> Callable[[str], tuple[int, str]]:
    """Sort key of a tag among equal scores: its place in `order` (unknown tags after), then its name."""
    unknown = len(order)
    return lambda t: (order.get(t, unknown), t)


def popularity_counts(
    split: ProtocolSplit, train_rows: np.ndarray, max_tags: int | None, count: str = "events"
) -> Counter[str]:
    """tag -> how many of the training users' label-1 items carry it (`count="events"`), or how many
    training users' C hold it (`"users"`)."""
    if count not in POPULARITY_COUNTS:
        raise ValueError(f"unknown popularity count {count!r}; valid: {POPULARITY_COUNTS}")
    user, tag = _event_tags(split, split.labels, train_rows, max_tags, label_1=True)
    if count == "users":  # each user's C counts a tag once
        tag = np.unique(user * len(split.item_tags.values) + tag) % len(split.item_tags.values)
    # no array the size of the tag table: training calls this once per user (`popularity_tables`)
    tags, n = np.unique(tag, return_counts=True)
    return Counter({str(split.item_tags.values[t]): c for t, c in zip(tags.tolist(), n.tolist(), strict=True)})


def popularity(
    split: ProtocolSplit, train_rows: np.ndarray, max_tags: int | None, order: dict[str, int], count: str = "events"
) -> list[str]:
    """Tags ranked by `popularity_counts` (ties by `tag_order`)."""
    counts = popularity_counts(split, train_rows, max_tags, count)
    tie = _tie_key(order)
    return sorted(counts, key=lambda t: (-counts[t], tie(t)))


def history_counts(split: ProtocolSplit, user: int, max_tags: int | None) -> dict[str, tuple[int, int]]:
    """tag -> (occurrences, distinct items) over the user's label-1 history items (first `max_tags` tags
    of each; None: all)."""
    counts: Counter[str] = Counter()
    items: dict[str, set[int]] = {}
    lo, hi = split.history.offsets[user], split.history.offsets[user + 1]
    for item, y in zip(split.history.codes[lo:hi], split.history_values[lo:hi], strict=True):
        if y == 1:
            for t in split.item_tags.row(int(item))[:max_tags]:
                counts[t] += 1
                items.setdefault(t, set()).add(int(item))
    return {t: (c, len(items[t])) for t, c in counts.items()}


def history_frequency(
    split: ProtocolSplit,
    user: int,
    popular: list[str],
    limit: int,
    max_tags: int | None,
    order: dict[str, int],
    rank: Mapping[str, int],
) -> list[str]:
    """User's label-1 history tags by frequency (ties by popularity, then `tag_order`), then popular tags.
    `rank`: tag -> its place in `popular`, built once by the caller for all its users (per user it
    would cost a pass over every tag)."""
    tie = _tie_key(order)
    counts = {t: c for t, (c, _) in history_counts(split, user, max_tags).items()}
    own = sorted(counts, key=lambda t: (-counts[t], rank.get(t, len(rank)), tie(t)))
    seen = set(own)
    return own + [t for t in popular[: limit + len(own)] if t not in seen]


def blend_ranking(
    hist: dict[str, tuple[int, int]],
    pop: Counter[str],
    popular: list[str],
    a: float,
    c: float,
    limit: int,
    order: dict[str, int],
    first: frozenset[str] | set[str] = frozenset(),
    extra: Mapping[str, float] | None = None,
) -> list[str]:
    """Ranked tags by log1p(pop) + a log1p(count) + c log1p(distinct), over history and popular tags
    (ties by `tag_order`); the tags in `first` (candidates too) before all others, in the same order.
    `extra`: a score added to some tags, which are candidates too (a candidate feature, `utpm bench start`)."""
    cand = set(hist) | set(popular[:limit]) | set(first) | set(extra or ())
    zero = (0, 0)
    tie = _tie_key(order)
    more = extra or {}

    def score(t: str) -> float:
        n, d = hist.get(t, zero)
        return math.log1p(pop.get(t, 0)) + a * math.log1p(n) + c * math.log1p(d) + more.get(t, 0.0)

    return sorted(cand, key=lambda t: (t not in first, -score(t), tie(t)))[:limit]


def tune_blend(
    split: ProtocolSplit,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    max_tags: int | None,
    ks: Sequence[int] = (1, 2, 3),
    grid: Sequence[float] = BLEND_GRID,
    order: dict[str, int] | None = None,
    counts: Sequence[str] = POPULARITY_COUNTS,
    all_item_tags: bool = False,
) -> Blend:
    """The `Blend` with the best mean validation Prec@k over `ks` (ties: event counts, then the smaller
    a, then c); `order`: the split's `tag_order`, when the caller has it already; `counts`: the
    popularity counts to choose among; `all_item_tags`: a history item's every tag counted (as the
    default model's features may count them), not its first `max_tags` as C."""
    order = tag_order(split, train_rows, max_tags) if order is None else order
    hists = [history_counts(split, int(i), None if all_item_tags else max_tags) for i in val_rows]
    clicked = [split.clicked_tags(int(i), max_tags) for i in val_rows]
    best, best_blend = -1.0, Blend(0.0, 0.0)
    for count in counts:
        pop = popularity_counts(split, train_rows, max_tags, count)
        popular = popularity(split, train_rows, max_tags, order, count)
        users = _BlendUsers(hists, clicked, pop, popular, max(ks), order)
        for a in grid:
            for c in grid:
                score = float(np.mean(list(users.precision(a, c, ks).values())))
                if score > best + 1e-12:
                    best, best_blend = score, Blend(a, c, count)
    return best_blend


class _BlendUsers:
    """`blend_ranking`'s candidates of every user with a non-empty C, flattened user by user: per
    candidate log1p(pop), log1p(count), log1p(distinct), its place in the tie order and whether it is
    in the user's C. `precision(a, c, k)` is `precision_at_k` of `blend_ranking`'s lists, found by
    picking each user's best candidate k times (the highest score, of those the first in the tie
    order) in numpy rather than sorting each user's candidates in Python for every (a, c)."""

    def __init__(
        self,
        hists: Sequence[dict[str, tuple[int, int]]],
        clicked: Sequence[set[str]],
        pop: Counter[str],
        popular: list[str],
        limit: int,
        order: dict[str, int],
    ) -> None:
        users = [(h, c) for h, c in zip(hists, clicked, strict=True) if c]
        self.n_clicked = np.asarray([len(c) for _, c in users], np.float64)
        cands = [sorted(set(h) | set(popular[:limit])) for h, _ in users]
        # users without a candidate (no history, no popular tag) score 0 and take no place in the arrays
        self.ranked = np.flatnonzero([len(cs) > 0 for cs in cands])
        kept = [(users[j], cands[j]) for j in self.ranked.tolist()]
        flat = [t for _, cs in kept for t in cs]
        place = {t: r for r, t in enumerate(sorted(set(flat), key=_tie_key(order)))}
        zero = (0, 0)
        counts = [h.get(t, zero) for (h, _), cs in kept for t in cs]
        self.log_pop = np.asarray([math.log1p(pop.get(t, 0)) for t in flat], np.float64)
        self.log_n = np.asarray([math.log1p(n) for n, _ in counts], np.float64)
        self.log_d = np.asarray([math.log1p(d) for _, d in counts], np.float64)
        self.place = np.asarray([place[t] for t in flat], np.int64)
        self.hit = np.asarray([t in c for (_, c), cs in kept for t in cs], np.int64)
        lens = np.asarray([len(cs) for _, cs in kept], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        self.user = np.repeat(np.arange(len(kept)), lens)

    def precision(self, a: float, c: float, ks: Sequence[int]) -> dict[int, float]:
        """Prec@k of the blend (a, c) for each k of `ks`, from one pass of max(ks) picks."""
        n_users = len(self.n_clicked)
        if not n_users:
            return {k: 0.0 for k in ks}
        hits_at = {}  # k -> each ranked user's hits among its first k picks
        hits = np.zeros(len(self.ranked), np.int64)
        # the same float operations, in the same order, as blend_ranking's score
        score = self.log_pop + a * self.log_n + c * self.log_d
        after_last = len(self.place)
        for pick in range(1, max(ks) + 1):
            if len(self.ranked):
                best = np.maximum.reduceat(score, self.starts)[self.user]
                top = score == best
                first = np.minimum.reduceat(np.where(top, self.place, after_last), self.starts)[self.user]
                # a user with fewer candidates than picks has none left once its best is -inf
                picked = np.flatnonzero(top & (self.place == first) & (best > -np.inf))
                hits += np.bincount(self.user[picked], weights=self.hit[picked], minlength=len(hits)).astype(np.int64)
                score[picked] = -np.inf
            hits_at[pick] = hits.copy()
        out = {}
        for k in ks:
            per_user = np.zeros(n_users)
            per_user[self.ranked] = hits_at[k] / np.minimum(k, self.n_clicked[self.ranked])
            out[k] = sum(per_user.tolist()) / n_users
        return out


def yardstick_rankings(
    name: str,
    split: ProtocolSplit,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    max_tags: int | None,
    limit: int = 50,
    val_rows: np.ndarray | None = None,
    blend: Blend | tuple[float, float] | None = None,
    order: dict[str, int] | None = None,
    planted: Sequence[set[str]] | None = None,
) -> list[list[str]]:
    """Ranked tags for each test user under yardstick `name` (or an `ORACLES` reference), items cut to
    their first `max_tags` tags.

    `blend` and the references need a `Blend` (or `(a, c)`: event counts) or `val_rows` to tune one
    on; the references also `planted`, each test user's planted interests. `order`: the split's
    `tag_order`, when the caller has it already (it reads every training event).
    """
    order = tag_order(split, train_rows, max_tags) if order is None else order
    popular = popularity(split, train_rows, max_tags, order)
    if name == "mostpop":
        return [popular[:limit]] * len(test_rows)
    if name == "histfreq":
        rank = {t: r for r, t in enumerate(popular)}
        return [history_frequency(split, int(i), popular, limit, max_tags, order, rank)[:limit] for i in test_rows]
    if name in ("blend", *ORACLES):
        if name in ORACLES and (planted is None or len(planted) != len(test_rows)):
            raise ValueError(f"{name!r} needs the planted interests of every test user")
        if blend is None:
            if val_rows is None:
                raise ValueError("the blend yardstick needs validation rows to tune a and c on, or blend=(a, c)")
            blend = tune_blend(split, train_rows, val_rows, max_tags, order=order)
        a, c, count = Blend(*blend)
        pop = popularity_counts(split, train_rows, max_tags, count)
        popular = popularity(split, train_rows, max_tags, order, count)
        none: set[str] = set()
        firsts = planted if name in ORACLES and planted is not None else [none] * len(test_rows)
        out = []
        for i, first in zip(test_rows, firsts, strict=True):
            hist = history_counts(split, int(i), max_tags)
            seen = first & hist.keys() if name == PLANTED_SEEN else first
            out.append(blend_ranking(hist, pop, popular, a, c, limit, order, seen))
        return out
    raise ValueError(f"unknown yardstick {name!r}; valid: {REFERENCES}")
