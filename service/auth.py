"""API keys: who may read, compute-and-store, or administer (UTPM_AUTH_KEYS, docs/serving.md "Auth").

Keys are presented in `X-API-Key` or `Authorization: Bearer`; the settings hold only their SHA-256,
so neither the environment nor a log line ever carries a key. A presented key is hashed and looked
up: the digest is a uniformly random 64-hex string, so the lookup's timing says nothing about it.

401: no key, or a key the service does not know. 403: a known key whose role does not allow this.
Run `python -m service.auth KEY` to print the entry for a key.
"""

from __future__ import annotations

import sys
from typing import Literal

from starlette.requests import Request

from service.config import Settings, hash_key
from service.errors import AdminDisabled, Forbidden, Unauthorized

Need = Literal["read", "write", "compute", "admin"]
ALLOWED: dict[str, frozenset[str]] = {
    "read": frozenset({"read", "write"}),
    "write": frozenset({"write"}),
    "admin": frozenset({"admin"}),
}


class Auth:
    def __init__(self, settings: Settings) -> None:
        self.roles = settings.key_roles
        configured = set(self.roles.values())
        self.reads_open = "read" not in configured
        self.writes_open = "write" not in configured
        self.admin_on = "admin" in configured
        self.open_compute = settings.auth_open_compute

    def describe(self) -> dict[str, str]:
        return {
            "reads": "open" if self.reads_open else "key",
            "writes": "open" if self.writes_open else "key",
            "compute_without_store": "as reads" if self.open_compute else "as writes",
            "admin": "key" if self.admin_on else "off",
        }

    def check(self, request: Request, need: Need) -> None:
        """Raise Unauthorized / Forbidden / AdminDisabled unless the request may do `need`."""
        if need == "compute":
            need = "read" if self.open_compute else "write"
        if need == "read" and self.reads_open:
            return
        if need == "write" and self.writes_open:
            return
        if need == "admin" and not self.admin_on:
            raise AdminDisabled("admin endpoints are disabled: no admin key is configured (UTPM_AUTH_KEYS)")
        key = _presented_key(request)
        if key is None:
            raise Unauthorized(f"this request needs an API key with the {need} role (X-API-Key header)")
        role = self.roles.get(hash_key(key))
        if role is None:
            raise Unauthorized("unknown API key")
        if role not in ALLOWED[need]:
            raise Forbidden(f"the API key's role ({role}) does not allow {need}s")


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1].startswith("-"):
        sys.stderr.write("usage: python -m service.auth KEY   (prints the UTPM_AUTH_KEYS digest of KEY)\n")
        return 2
    sys.stdout.write(hash_key(argv[1]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
