"""The scripts fleet mode runs in Redis, one mechanism at a time.

Each script is read from src/fleet_wire.c, the one place it is written,
and run in a real Redis with the keys and arguments set up by hand, so
that a guard that is broken fails here every time, not by luck of timing
in a test of the whole daemon. What the daemon does with the answers is
tested in test_fleet.py."""
import pytest

from redis_fixture import fleet_script as script
from redis_fixture import make_redis, redis  # noqa: F401 (fixtures)

KEYS = ["t:current", "t:previous", "gen", "events", "lease"]


def adopt(r, value="7:fp:sealed", ttl=60000, gen="7", guard=None):
    return r.cli("EVAL", script("adopt_lua"), len(KEYS), *KEYS, value, ttl, gen, guard)


# ---------------------------------------------------------------- adopt: a token minted during an outage


def test_adopt_stores_a_token_when_nothing_happened_since_the_host_caught_up(redis):
    redis.cli("SET", "gen", "7")
    last = redis.cli("XADD", "events", "*", "h", "1").decode()
    assert adopt(redis, guard=last) == 1
    assert redis.cli("GET", "t:current") == b"7:fp:sealed"
    assert 0 < redis.cli("PTTL", "t:current") <= 60000


def test_adopt_refuses_once_any_event_came_after_what_the_host_applied(redis):
    """A drop or flush the host has not applied yet may be for this very
    token: the token stays the host's own."""
    redis.cli("SET", "gen", "7")
    last = redis.cli("XADD", "events", "*", "h", "1").decode()
    redis.cli("XADD", "events", "*", "d", "someone")
    assert adopt(redis, guard=last) == 0
    assert redis.cli("EXISTS", "t:current") == 0


def test_adopt_refuses_after_a_flush(redis):
    redis.cli("SET", "gen", "8")  # flushed since the token was minted under 7
    last = redis.cli("XADD", "events", "*", "h", "1").decode()
    assert adopt(redis, gen="7", guard=last) == 0
    assert redis.cli("EXISTS", "t:current") == 0


def test_adopt_refuses_without_the_stream_or_with_a_malformed_guard(redis):
    redis.cli("SET", "gen", "7")
    assert adopt(redis, guard="1-0") == 0  # no stream: Redis lost it, nothing can be told
    redis.cli("XADD", "events", "5-0", "h", "1")
    for guard in ("", "x", "5", "5-", "-0", "5-0-1"):
        assert adopt(redis, guard=guard) == 0, guard
    assert adopt(redis, guard="5-0") == 1
    assert adopt(redis, guard="6-0") == 2  # a guard past the newest event: nothing since, one shared now


@pytest.mark.parametrize("key", ["t:current", "t:previous"])
def test_adopt_gives_way_to_the_fleets_token_under_either_key_name(redis, key):
    redis.cli("SET", "gen", "7")
    last = redis.cli("XADD", "events", "*", "h", "1").decode()
    redis.cli("SET", key, "7:other:sealed", "PX", 60000)
    assert adopt(redis, guard=last) == 2
    assert redis.cli("GET", key) == b"7:other:sealed"


def test_adopt_replaces_a_value_of_a_generation_flushed_since(redis):
    redis.cli("SET", "gen", "7")
    last = redis.cli("XADD", "events", "*", "h", "1").decode()
    redis.cli("SET", "t:current", "6:old:sealed", "PX", 60000)
    assert adopt(redis, guard=last) == 1
    assert redis.cli("GET", "t:current") == b"7:fp:sealed"


def test_adopt_compares_event_ids_as_numbers_not_text(redis):
    redis.cli("SET", "gen", "7")
    redis.cli("XADD", "events", "10-0", "h", "1")
    assert adopt(redis, guard="9-5") == 0  # "10-0" > "9-5" though "1" < "9"
    redis.cli("XADD", "events", "10-2", "h", "1")
    assert adopt(redis, guard="10-1") == 0
    assert adopt(redis, guard="10-2") == 1


def test_adopt_gives_way_to_a_host_minting_under_the_lease(redis):
    """Another host holds the lease: its mint will be the fleet's token, so
    the outage's token is given up (and the user is served that one)."""
    redis.cli("SET", "gen", "7")
    last = redis.cli("XADD", "events", "*", "h", "1").decode()
    redis.cli("SET", "lease", "0123456789abcdef0123456789abcdef", "PX", 5000)
    assert adopt(redis, guard=last) == 2
    assert redis.cli("EXISTS", "t:current") == 0


# ---------------------------------------------------------------- revoked: tokens revoked at Instacart


def test_revoked_tells_the_fingerprints_first_then_the_users_drop(redis):
    """Hosts read an event's fields in order: the revoked fingerprints must
    be known before the drop makes them look the user up again, or the
    lookup could bring the revoked token back from Redis."""
    assert redis.cli("EVAL", script("revoked_lua"), 1, "events", 100, "sealed-fps", "sealed-user") == 1
    assert redis.cli("EVAL", script("revoked_lua"), 1, "events", 100, "sealed-fps", "") == 1
    (_, with_user), (_, alone) = redis.cli("XRANGE", "events", "-", "+")
    assert list(with_user.items()) == [(b"r", b"sealed-fps"), (b"d", b"sealed-user")]  # in the stream's order
    assert list(alone.items()) == [(b"r", b"sealed-fps")]  # no user: nothing dropped
