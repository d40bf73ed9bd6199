"""No tests here: the fixture make_stub (conftest.py), importable under this
name for test_fleet.py. The tests of reloads and restarts are in
test_lifecycle.py."""
from conftest import make_stub  # noqa: F401 (a fixture)
