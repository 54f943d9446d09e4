"""The fixture that caching tests rely on really is a redis-server: commands, TTLs, restarts."""

import time

import redis

from loadtest.procs import Redis as RedisServer


def test_redis_fixture_is_a_real_server_with_ttl_and_restart(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("k", "v", px=200)
    assert client.get("k") == b"v"
    time.sleep(0.3)
    assert client.get("k") is None  # expired by the server, not by us
    redis_server.stop()
    try:
        client.ping()
        raise AssertionError("ping succeeded with the server stopped")
    except redis.ConnectionError:
        pass
    finally:
        redis_server.start()
    assert client.ping()
