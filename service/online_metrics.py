"""The paper's online metrics (section 4.5), QC and DCTR, and the comparison of two arms.

For one user on one day, only tags within the profile served to that user count:

- QC, quantity of clicked tags: the number of distinct clicked tags within the profile;
- DCTR, de-duplicated click-through rate of tags: distinct clicked tags / distinct browsed tags,
  both within the profile (a clicked item was also browsed, so DCTR <= 1).

An arm's figures over many user-days: QC per user-day (the mean of QC), and DCTR as the ratio of
the sums (sum of distinct clicked / sum of distinct browsed), each user-day weighted by its browsed
tags, as a click-through rate over impressions is. `Totals` holds the sums that make both and their
variances, so several replicas (and several feedback calls for the same user-day) add up.

The difference between arms comes with a 95% confidence interval from a normal approximation over
user-days (the unit that is randomised, via the user): Welch's standard error for the difference of
QC means, and the delta method for the ratio DCTR (the linearised ratio's variance over user-days).
Pure Python, no numpy: the service imports it and so does the simulator.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass
class UserDay:
    """One user's in-profile tags of one day so far: browsed (every impression) and clicked."""

    browsed: set[str]
    clicked: set[str]


def user_day(profile: Iterable[str], items: Iterable[tuple[Iterable[str], bool]]) -> tuple[UserDay, int]:
    """The in-profile browsed and clicked tags of impressions `(tags, clicked)`; and how many tag
    occurrences fell outside the profile (counted, not used)."""
    inside = set(profile)
    browsed: set[str] = set()
    clicked: set[str] = set()
    outside = 0
    for tags, was_clicked in items:
        for tag in tags:
            if tag not in inside:
                outside += 1
                continue
            browsed.add(tag)
            if was_clicked:
                clicked.add(tag)
    return UserDay(browsed, clicked), outside


@dataclass
class Totals:
    """Sums over user-days of one arm (and day, or several days added together)."""

    users: int = 0  # user-days with at least one in-profile browsed tag
    events: int = 0  # feedback events counted
    items: int = 0  # impressions (browsed items) counted
    clicked_items: int = 0
    outside_tags: int = 0  # tag occurrences outside the served profile (not in QC/DCTR)
    no_profile: int = 0  # events not counted: no cached profile of that user under that version
    sum_c: int = 0  # sum of distinct in-profile clicked tags (QC per user-day, summed)
    sum_b: int = 0  # sum of distinct in-profile browsed tags
    sum_cc: int = 0  # sums of squares and products, for the variances
    sum_bb: int = 0
    sum_cb: int = 0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Totals:
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in raw.items() if k in names})

    def add(self, other: Totals) -> Totals:
        return Totals(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def add_user_day(self, before: tuple[int, int], after: tuple[int, int]) -> None:
        """A user-day's (clicked, browsed) distinct counts went from `before` to `after`."""
        (c0, b0), (c1, b1) = before, after
        if b0 == 0 and b1 > 0:
            self.users += 1
        self.sum_c += c1 - c0
        self.sum_b += b1 - b0
        self.sum_cc += c1 * c1 - c0 * c0
        self.sum_bb += b1 * b1 - b0 * b0
        self.sum_cb += c1 * b1 - c0 * b0

    @property
    def qc(self) -> float | None:
        """Mean QC per user-day."""
        return self.sum_c / self.users if self.users else None

    @property
    def dctr(self) -> float | None:
        return self.sum_c / self.sum_b if self.sum_b else None

    def qc_variance(self) -> float | None:
        """Variance of the QC mean (the sample variance over user-days / n)."""
        n = self.users
        if n < 2:
            return None
        mean = self.sum_c / n
        return max(0.0, (self.sum_cc - n * mean * mean) / (n - 1)) / n

    def dctr_variance(self) -> float | None:
        """Delta-method variance of sum_c / sum_b over user-days."""
        n = self.users
        if n < 2 or self.sum_b == 0:
            return None
        r = self.sum_c / self.sum_b
        mean_b = self.sum_b / n
        # sum over user-days of (c - r b)^2; its mean is 0 by construction of r
        ss = self.sum_cc - 2 * r * self.sum_cb + r * r * self.sum_bb
        return max(0.0, ss / (n - 1)) / (n * mean_b * mean_b)

    def summary(self) -> dict[str, Any]:
        return {"qc": self.qc, "dctr": self.dctr, **asdict(self)}


def difference(champion: Totals, challenger: Totals) -> dict[str, Any]:
    """challenger - champion for QC per user-day and DCTR, each with its 95% CI and relative change."""
    out: dict[str, Any] = {}
    for name, var in (("qc", Totals.qc_variance), ("dctr", Totals.dctr_variance)):
        a, b = getattr(champion, name), getattr(challenger, name)
        va, vb = var(champion), var(challenger)
        entry: dict[str, Any] = {"champion": a, "challenger": b, "diff": None, "ci95": None, "relative": None}
        if a is not None and b is not None:
            entry["diff"] = b - a
            entry["relative"] = (b - a) / a if a else None
            if va is not None and vb is not None:
                half = Z95 * math.sqrt(va + vb)
                entry["ci95"] = [b - a - half, b - a + half]
        out[name] = entry
    out["method"] = (
        "95% CI, normal approximation over user-days: Welch standard error for QC per user-day, "
        "delta method for DCTR (a ratio of sums)"
    )
    return out
