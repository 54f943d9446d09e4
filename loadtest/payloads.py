"""Request bodies for `POST /profile`: realistic features, cheap enough to draw inside a load generator.

Two sources:

- a bundle's vocabularies (`encoder/fields.json`, `encoder/vocab_<field>.json`): every field gets
  values drawn with the training frequencies (a vocabulary's counts are the number of training
  users holding each value), a multi-valued field between 1 and its max length of them;
- a JSON-lines file, one request body per line (at least a `features` object), e.g. the held-out
  test users `utpm bench serve` writes next to its bundle: replayed in a seeded random order.

Only the standard library: locust imports this in every worker, and it must not pull numpy or
the model's code into the load generator.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Features = dict[str, list[str] | str]

RESERVED_IDS = 2  # vocabulary ids 0 and 1 are padding and the OOV bucket: never sent


@dataclass(frozen=True)
class FieldSampler:
    """Draws one field's values by training frequency."""

    name: str
    multi: bool
    max_len: int
    tokens: list[str]
    cum_weights: list[int]

    def draw(self, rng: random.Random) -> list[str] | str:
        if not self.multi:
            return rng.choices(self.tokens, cum_weights=self.cum_weights)[0]
        n = rng.randint(1, self.max_len)
        return rng.choices(self.tokens, cum_weights=self.cum_weights, k=n)


class PayloadSource:
    """`features(rng)` returns one user's raw features; `describe()` says where they come from."""

    def __init__(self, samplers: list[FieldSampler] | None = None, bodies: list[Features] | None = None) -> None:
        if not samplers and not bodies:
            raise ValueError("a payload source needs vocabularies or request bodies")
        self.samplers = samplers or []
        self.bodies = bodies or []
        self._source = ""

    @classmethod
    def from_bundle(cls, bundle: str | Path) -> PayloadSource:
        """Sample from the vocabularies of `bundle` (a bundle or a training run directory)."""
        enc = Path(bundle) / "encoder"
        fields_file = enc / "fields.json"
        if not fields_file.is_file():
            raise FileNotFoundError(f"{fields_file} not found: is {bundle} a bundle (`utpm export`)?")
        samplers = []
        for spec in json.loads(fields_file.read_text()):
            vocab = json.loads((enc / f"vocab_{spec['name']}.json").read_text(encoding="utf-8"))
            tokens = vocab["tokens"][RESERVED_IDS:]
            counts = vocab.get("counts") or [1] * (len(tokens) + RESERVED_IDS)
            weights = [max(1, int(c)) for c in counts[RESERVED_IDS:]]  # a 0 count still gets drawn, rarely
            if not tokens:
                continue  # a field with no known value: a user would send nothing useful for it
            samplers.append(
                FieldSampler(
                    spec["name"],
                    spec["kind"] == "multi",
                    int(spec["max_len"]),
                    tokens,
                    list(itertools.accumulate(weights)),
                )
            )
        source = cls(samplers=samplers)
        source._source = f"sampled from the vocabularies of {bundle} by training frequency"
        return source

    @classmethod
    def from_jsonl(cls, path: str | Path) -> PayloadSource:
        """Replay the `features` of each line of a JSON-lines file."""
        bodies = []
        with Path(path).open("rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                    row = json.loads(line) if line.strip() else None
                except UnicodeDecodeError:
                    raise ValueError(f"{path}:{n}: not UTF-8 text") from None
                except ValueError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e})") from None
                if row is None:
                    continue
                features = row.get("features") if isinstance(row, dict) else None
                if not isinstance(features, dict):
                    raise ValueError(f"{path}:{n}: expected an object with a 'features' object")
                bodies.append(features)
        if not bodies:
            raise ValueError(f"{path} holds no request bodies")
        source = cls(bodies=bodies)
        source._source = f"{len(bodies):,} request bodies replayed from {path}"
        return source

    @classmethod
    def open(cls, bundle: str | Path | None, payloads: str | Path | None) -> PayloadSource:
        """The payload file if given, else the bundle's vocabularies."""
        if payloads:
            return cls.from_jsonl(payloads)
        if bundle:
            return cls.from_bundle(bundle)
        raise ValueError("give a bundle (--bundle) or a payload file (--payloads)")

    def features(self, rng: random.Random) -> Features:
        if self.bodies:
            return rng.choice(self.bodies)
        return {s.name: s.draw(rng) for s in self.samplers}

    def body(self, rng: random.Random, user_id: str, k: int) -> dict[str, Any]:
        """A complete `POST /profile` body."""
        return {"user_id": user_id, "features": self.features(rng), "k": k}

    def describe(self) -> str:
        return self._source
