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


# ---------------------------------------------------------------- drop: what a revocation tells the fleet


def test_a_revocations_drop_carries_its_proof_of_when_it_was_made(redis):
    """A revocation's event is 'v' (hosts revoke their own copy), 'w' (when
    it was made, with a MAC over 'v': a replayed or altered one revokes
    nothing) and 'd' (hosts that know only drops drop the user); a plain
    drop is 'd' alone. Each takes the token out of Redis and returns it."""
    redis.cli("SET", "t:current", "7:fp:sealed", "PX", 60000)
    args = ("EVAL", script("drop_lua"), 3, "t:current", "t:previous", "events")
    out = redis.cli(*args, "", "sealed-user", 100, "v", "", "1700000000000:mac")
    assert out[0] == b"7:fp:sealed" and 0 < out[1] <= 60000
    assert redis.cli("EXISTS", "t:current") == 0
    redis.cli(*args, "", "sealed-user", 100, "d", "", "")
    (_, revocation), (_, drop) = redis.cli("XRANGE", "events", "-", "+")
    assert list(revocation.items()) == [(b"v", b"sealed-user"), (b"w", b"1700000000000:mac"),
                                        (b"d", b"sealed-user")]
    assert list(drop.items()) == [(b"d", b"sealed-user")]


# ---------------------------------------------------------------- lookup: a token, or the lease to mint it

LOOKUP_KEYS = ["t:current", "t:previous", "l:current", "gen", "pause", "l:previous"]
OTHER_HOST, US = "a" * 32, "b" * 32


def lookup(r, keys=LOOKUP_KEYS):
    """The lookup as a host asks it: least life 1 s, lease 2 s, nothing skipped."""
    return r.cli("EVAL", script("lookup_lua"), len(keys), *keys, 1000, US, 2000, "", "", "0")


def test_lookup_takes_the_lease_under_the_current_keys_name(redis):
    assert lookup(redis)[0] == 2
    assert redis.cli("GET", "l:current") == US.encode()
    assert redis.cli("EXISTS", "l:previous") == 0


@pytest.mark.parametrize("name", ["l:current", "l:previous"])
def test_lookup_waits_on_another_hosts_lease_under_either_keys_name(redis, name):
    """Mid-rotation, a host already sealing with the new key names the
    lease under it; one still on the old key names it under that. Each
    waits on the other's, so two first requests make one mint."""
    redis.cli("SET", name, OTHER_HOST, "PX", 2000)
    answer = lookup(redis)
    assert answer[0] == 4 and answer[1] == OTHER_HOST.encode()
    assert redis.cli("GET", "l:current") == (OTHER_HOST.encode() if name == "l:current" else None)


def test_lookup_takes_its_lease_over_a_previous_name_holder_that_is_no_lease_id(redis):
    redis.cli("SET", "l:previous", "written-by-hand", "PX", 60000)
    assert lookup(redis)[0] == 2
    assert redis.cli("GET", "l:current") == US.encode()


def test_lookup_without_a_previous_key_names_one_lease(redis):
    keys = LOOKUP_KEYS[:5] + ["l:current"]
    redis.cli("SET", "l:current", US, "PX", 2000)  # ours already: a lookup sent again after a lost answer
    assert lookup(redis, keys)[0] == 2


@pytest.mark.parametrize("key", ["t:current", "t:previous", "l:current", "l:previous"])
def test_lookup_reads_a_token_or_lease_key_of_another_type_as_none(redis, key):
    """A writer's XADD on a user's key: the lookup failed with WRONGTYPE,
    and every miss for that user minted alone. Now it takes the lease
    (SET writes over a lease key of another type)."""
    redis.cli("XADD", key, "*", "x", "y")
    assert lookup(redis)[0] == 2
    assert redis.cli("GET", "l:current") == US.encode()


# ---------------------------------------------------------------- flush: a new generation for the fleet


def flush(r, floor, proof="p-proof", bound="q-proof"):
    return r.cli("EVAL", script("flush_lua"), 2, "gen", "events", 100, floor, proof, "0", bound, 65536)


def test_flush_builds_on_the_higher_of_the_floor_and_the_generation_and_binds_its_floor(redis):
    redis.cli("SET", "gen", "40")
    assert flush(redis, 7) == 41
    assert flush(redis, 50) == 51  # set back below what this host saw: above both
    (_, fields), = redis.cli("XREVRANGE", "events", "+", "-", "COUNT", 1)
    event = fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2]))
    assert event == {b"f": b"51", b"p": b"p-proof", b"b": b"50", b"q": b"q-proof"}


def test_flush_does_not_build_on_a_generation_far_above_its_floor(redis):
    """A writer's generation just under 2^53 (or any far above the floor):
    the next flush goes to the floor's next, not to where no number fits."""
    redis.cli("SET", "gen", str(2 ** 53 - 3))
    assert flush(redis, 7) == 8
    redis.cli("SET", "gen", str(7 + 65536))
    assert flush(redis, 7) == 8
    redis.cli("SET", "gen", str(7 + 65535))
    assert flush(redis, 7) == 7 + 65536  # within the step: another host's flushes this one missed


# ---------------------------------------------------------------- keys of ours a writer made another type


def test_release_and_renew_read_a_lease_of_another_type_as_none(redis):
    """tokend's connection check runs release on a lease key: one made a
    stream failed every connection, for good (found by an attack)."""
    redis.cli("XADD", "l:permissions", "*", "x", "y")
    assert redis.cli("EVAL", script("release_lua"), 1, "l:permissions", "-") == 0
    assert redis.cli("EVAL", script("renew_lua"), 1, "l:permissions", US, 2000) == 0


@pytest.mark.parametrize("key", ["t:current", "l:current"])
def test_publish_writes_over_a_token_or_lease_key_of_another_type(redis, key):
    """A user's token key made a stream: every host minted alone for that
    user, for as long as it stayed (found by an attack)."""
    redis.cli("SET", "gen", "7")
    redis.cli("XADD", key, "*", "x", "y")
    keys = ["t:current", "l:current", "gen", "creds", "credsok"]
    assert redis.cli("EVAL", script("publish_lua"), 5, *keys, "7:fp:sealed", 60000, US, "7", "proof", 1000) == 1
    assert redis.cli("GET", "t:current") == b"7:fp:sealed"
