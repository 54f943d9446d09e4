"""A/B by model version: a challenger bundle next to the champion, users split by a stable hash.

The champion is `ServiceState.engine` (what a service without an experiment serves); the
challenger, when one is loaded, is `Experiment.challenger`. A user belongs to the challenger arm
when the hash of (challenger version, user id) falls below the configured share: stable for a
user as long as that challenger is served, the same on every replica, and reshuffled for the next
challenger so one experiment's users are not the next one's. Cache keys carry the model version,
so the arms' profiles never mix. Responses name the arm (`"arm"` in the body, first key).

A caller may pin a served version with the `X-UTPM-Model-Version` header (debugging, the profile
explorer's side-by-side view); a pinned response names the arm of the version it was served by.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from service.engine import ProfileEngine
from service.errors import InvalidInput

Arm = Literal["champion", "challenger"]
PIN_HEADER = "x-utpm-model-version"
_PIN_BYTES = PIN_HEADER.encode()
_HASH_SCALE = float(1 << 64)
# Precomputed body prefixes: labelling a response is one concatenation.
_ARM_PREFIX: dict[str, bytes] = {arm: b'{"arm":"' + arm.encode() + b'",' for arm in ("champion", "challenger")}


def bucket(salt: str, user_id: str) -> float:
    """A uniform number in [0, 1) from (salt, user id): the first 8 bytes of BLAKE2b."""
    digest = hashlib.blake2b(f"{salt}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SCALE


def assign(salt: str, user_id: str, share: float) -> Arm:
    """The arm of `user_id` when a share `share` of users goes to the challenger identified by `salt`."""
    return "challenger" if bucket(salt, user_id) < share else "champion"


def label(body: bytes, arm: str) -> bytes:
    """A JSON object response with `"arm"` added as its first key (one copy of the body)."""
    return b"".join((_ARM_PREFIX[arm], memoryview(body)[1:]))


def pinned(scope: Mapping[str, Any]) -> str | None:
    """The version pinned by the request's header, if any; read from the ASGI scope's raw headers
    (lower-case names), because Starlette's `headers.get` raises and catches a KeyError on a miss."""
    for name, value in scope["headers"]:
        if name == _PIN_BYTES:
            return str(value.decode("latin-1"))
    return None


def trained_on(engine: ProfileEngine) -> dict[str, Any] | None:
    """The protocol split of the arm's training data as its run recorded it (seed, user counts; not the
    server's data path), so that a replay can check its test users are held out; None for a bundle
    exported before export recorded it."""
    protocol = engine.bundle.manifest.model.get("protocol")
    return {k: v for k, v in protocol.items() if k != "source"} if isinstance(protocol, dict) else None


def tags_per_item(engine: ProfileEngine) -> int | None:
    """N, the tags of each clicked item its training counted (the preset's), so that a replay's
    impressions carry the item tags the model was trained on; None when the manifest lacks it."""
    n = engine.bundle.manifest.model.get("preset", {}).get("N")
    return n if isinstance(n, int) else None


@dataclass
class Experiment:
    """The challenger (if any) and the share of users it serves; changed only by the admin routes."""

    challenger: ProfileEngine | None = None
    share: float = 0.0

    def pick(self, champion: ProfileEngine, user_id: str, pin: str | None) -> tuple[ProfileEngine, Arm]:
        """The engine that serves `user_id` and its arm; `pin`, when given, must be a served version."""
        challenger = self.challenger
        if pin is not None:
            if pin == champion.version:
                return champion, "champion"
            if challenger is not None and pin == challenger.version:
                return challenger, "challenger"
            raise InvalidInput(f"{PIN_HEADER}: model version {pin!r} is not served; served: {self.versions(champion)}")
        if challenger is None:
            return champion, "champion"
        if assign(challenger.version, user_id, self.share) == "challenger":
            return challenger, "challenger"
        return champion, "champion"

    def arm_versions(self, champion: ProfileEngine) -> dict[str, str]:
        """{arm: model version} of the arms served now."""
        arms = {"champion": champion.version}
        if self.challenger is not None:
            arms["challenger"] = self.challenger.version
        return arms

    def versions(self, champion: ProfileEngine) -> list[str]:
        return list(self.arm_versions(champion).values())

    def describe(self, champion: ProfileEngine) -> dict[str, object]:
        def arm(engine: ProfileEngine) -> dict[str, object]:
            return {
                "model_version": engine.version,
                "model": engine.model_name,
                "fields": engine.field_names,
                "ignored_fields": sorted(engine.ignored_fields),  # another arm's, accepted and left out
                "trained_on": trained_on(engine),
                "tags_per_item": tags_per_item(engine),
            }

        challenger = self.challenger
        return {
            "champion": arm(champion),
            "challenger": arm(challenger) if challenger is not None else None,
            "challenger_share": self.share if challenger is not None else 0.0,
            "assignment": "blake2b(challenger version, user id) < share",
            "pin_header": "X-UTPM-Model-Version",
        }
