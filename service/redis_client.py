"""Redis clients from the service's URLs: one place for the schemes, asynchronous for the service,
synchronous for `utpm profile batch`.

- `redis://[user:password@]host:port/db`, `rediss://` (TLS), `unix://`: one server;
- `redis+cluster://host:port` (`rediss+cluster://`): a cluster, discovered from that seed node;
- `redis+sentinel://[user:password@]host:port[,host:port...]/master-name[/db][?query]`: the master
  that the Sentinels name `master-name`, found through them and again after a failover; the
  credentials are the master's, `?sentinel_password=` (and `sentinel_username=`) the Sentinels' own
  (their `requirepass`); `rediss+sentinel://` speaks TLS to the Sentinels and the master alike, with
  redis-py's `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile` and `ssl_cert_reqs` in the query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
)
SENTINEL_AUTH = ("sentinel_username", "sentinel_password")
SENTINEL_TLS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
SECRET_PARAMS = ("password", "sentinel_password")  # query parameters that redact_url hides


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    master: str
    db: int
    username: str | None
    password: str | None
    sentinel_auth: dict[str, str] = field(default_factory=dict)  # username/password for the Sentinels
    tls: dict[str, Any] = field(default_factory=dict)  # ssl=True and its files, for Sentinels and master


def check_url(url: str) -> None:
    """ValueError naming what is wrong with a Redis URL, without its secrets; None if it is usable (a typo is
    then an invalid setting or option, not a traceback from redis-py at start-up)."""
    if not url.startswith(SCHEMES):
        raise ValueError(f"the Redis URL must start with one of {', '.join(SCHEMES)}")
    if kind_of(url) == "redis-sentinel":
        parse_sentinel(url)


def kind_of(url: str) -> str:
    """ "redis-cluster", "redis-sentinel" or "redis" (what `/readyz` reports)."""
    if "+cluster://" in url:
        return "redis-cluster"
    if "+sentinel://" in url:
        return "redis-sentinel"
    return "redis"


def parse_sentinel(url: str) -> SentinelTarget:
    """A `redis+sentinel://` URL's parts; ValueError naming what is wrong."""
    parts = urlsplit(url)
    shown = redact_url(url.split("?", 1)[0])  # the query left out: a misspelt parameter may hold a password
    hosts = parts.netloc.rsplit("@", 1)[-1]
    sentinels = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"Sentinel address {host!r} is not host:port (in {shown})")
        sentinels.append((name, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(
            "a Sentinel URL is redis+sentinel:// (rediss+sentinel:// for TLS) "
            f"[user:password@]host:port[,host:port...]/master-name[/db][?sentinel_password=...], "
            f"got {shown}"
        )
    credentials = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else ""
    username, _, password = credentials.partition(":")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - set(SENTINEL_AUTH) - set(SENTINEL_TLS))
    if unknown:
        raise ValueError(
            f"a Sentinel URL takes {', '.join(SENTINEL_AUTH + SENTINEL_TLS)} in its query, not "
            f"{', '.join(unknown)} (in {shown})"
        )
    tls_files = {k: v for k, v in query.items() if k in SENTINEL_TLS}
    if tls_files and parts.scheme != "rediss+sentinel":
        raise ValueError(f"{', '.join(sorted(tls_files))} need rediss+sentinel:// (TLS), in {shown}")
    return SentinelTarget(
        sentinels,
        path[0],
        int(path[1]) if len(path) == 2 else 0,
        unquote(username) or None,
        unquote(password) if password else None,
        {k.removeprefix("sentinel_"): v for k, v in query.items() if k in SENTINEL_AUTH and v},
        {"ssl": True, **tls_files} if parts.scheme == "rediss+sentinel" else {},
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
        asking = {**timeouts, **t.tls, **t.sentinel_auth}  # the Sentinels' connections
        return sentinel(t.sentinels, sentinel_kwargs=asking, **timeouts).master_for(
            t.master, db=t.db, username=t.username, password=t.password, **timeouts, **t.tls, **kw
        )
    return redis.from_url(url, **timeouts, **kw)


def redact_url(url: str) -> str:
    """A Redis URL fit for logs: the passwords (the URL's and a Sentinel's) replaced by ***."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k in SECRET_PARAMS for k, _ in query):
        parts = parts._replace(query=urlencode([(k, "***" if k in SECRET_PARAMS else v) for k, v in query], safe="*/"))
    if "@" in parts.netloc and ":" in parts.netloc.rsplit("@", 1)[0]:
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.netloc.rsplit("@", 1)[0].partition(":")[0]
        parts = parts._replace(netloc=f"{user}:***@{netloc}")
    return urlunsplit(parts)


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
