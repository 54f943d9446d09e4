"""Redis clients from the service's URLs: one place for the schemes, asynchronous for the service,
synchronous for `utpm profile batch`.

- `redis://[user:password@]host:port/db`, `rediss://` (TLS), `unix://`: one server;
- `redis+cluster://host:port` (`rediss+cluster://`): a cluster, discovered from that seed node;
- `redis+sentinel://[user:password@]host:port[,host:port...]/master-name[/db]`: the master that the
  Sentinels name `master-name`, found through them and again after a failover; the credentials are
  the master's (the Sentinels are asked without any).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://", "redis+sentinel://")


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    master: str
    db: int
    username: str | None
    password: str | None


def kind_of(url: str) -> str:
    """ "redis-cluster", "redis-sentinel" or "redis" (what `/readyz` reports)."""
    if "+cluster://" in url:
        return "redis-cluster"
    if url.startswith("redis+sentinel://"):
        return "redis-sentinel"
    return "redis"


def parse_sentinel(url: str) -> SentinelTarget:
    """A `redis+sentinel://` URL's parts; ValueError naming what is wrong."""
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    sentinels = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"Sentinel address {host!r} is not host:port (in {redact_url(url)})")
        sentinels.append((name, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(
            f"a Sentinel URL is redis+sentinel://[user:password@]host:port[,host:port...]/master-name[/db], "
            f"got {redact_url(url)}"
        )
    credentials = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else ""
    username, _, password = credentials.partition(":")
    return SentinelTarget(
        sentinels,
        path[0],
        int(path[1]) if len(path) == 2 else 0,
        unquote(username) or None,
        unquote(password) if password else None,
    )


def async_client(url: str, timeout_s: float, **kw: Any) -> Any:
    """The redis-py asyncio client for `url`; `kw` go to a single server's or the master's connections."""
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.sentinel import Sentinel

    return _client(url, timeout_s, Redis, RedisCluster, Sentinel, kw)


def sync_client(url: str, timeout_s: float) -> Any:
    """The same for blocking callers (the batch writer's processes)."""
    from redis import Redis
    from redis.cluster import RedisCluster
    from redis.sentinel import Sentinel

    return _client(url, timeout_s, Redis, RedisCluster, Sentinel, {})


def _client(url: str, timeout_s: float, redis: Any, cluster: Any, sentinel: Any, kw: dict[str, Any]) -> Any:
    timeouts = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    kind = kind_of(url)
    if kind == "redis-cluster":
        return cluster.from_url(url.replace("+cluster://", "://"), **timeouts)
    if kind == "redis-sentinel":
        t = parse_sentinel(url)
        return sentinel(t.sentinels, **timeouts).master_for(
            t.master, db=t.db, username=t.username, password=t.password, **timeouts, **kw
        )
    return redis.from_url(url, **timeouts, **kw)


def redact_url(url: str) -> str:
    """A Redis URL fit for logs: the password replaced by ***."""
    parts = urlsplit(url)
    if "@" not in parts.netloc or ":" not in parts.netloc.rsplit("@", 1)[0]:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.netloc.rsplit("@", 1)[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


# Eviction policies that may drop keys without an expiry: the version registry, the fleet's arms.
KEEPS_PERMANENT_KEYS = ("noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl")


async def eviction_warning(client: Any) -> str | None:
    """What is wrong with the Redis's `maxmemory-policy` for this service, or None (also when Redis will
    not say: INFO refused, a cluster)."""
    try:
        policy = (await client.info("memory")).get("maxmemory_policy")
    except Exception:  # a managed Redis may refuse INFO; the check is advice, not a condition
        return None
    if not isinstance(policy, str) or policy in KEEPS_PERMANENT_KEYS:
        return None
    return (
        f"Redis maxmemory-policy is {policy}: at its memory bound it may evict the model version registry "
        "and the fleet's arms, which have no expiry; use volatile-ttl (profiles, which expire soonest, go first)"
    )
