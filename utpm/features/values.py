"""The one rule for a raw feature value, in the event log and in requests alike.

Surrounding whitespace is no part of a value and a value that is empty after stripping is absent:
the loader applies it to every column of the data (`utpm.data.loading`), so the service applies it
to every request value, or " sci-fi" would be an unknown value to a model that learnt "sci-fi".
Case is kept: a data set's adapter may fold it (the MovieLens one lowercases tags), requests must
then send what the adapter wrote.
"""

from __future__ import annotations

from collections.abc import Iterable


def clean_values(values: Iterable[str]) -> list[str]:
    """The values stripped, the empty ones dropped, in their order (repeats kept: they count)."""
    out = list(map(str.strip, values))
    return out if "" not in out else [v for v in out if v]
