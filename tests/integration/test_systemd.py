"""No tests here: the fixtures of tokend started as systemd starts it
(systemd_fixture.py), importable under this name for test_fleet.py. The
tests of tokend under a service manager are in test_lifecycle.py."""
from systemd_fixture import make_sd, notify, stop_and_take_cache  # noqa: F401 (fixtures)
