"""Errors of the tag index; the CLI turns them into one `error: ...` line."""

from __future__ import annotations


class TagIndexError(Exception):
    """An index cannot be built, read or searched as asked."""


class IndexMismatchError(TagIndexError):
    """An index does not belong to this bundle: other bundle version, dimension, metric or size."""
