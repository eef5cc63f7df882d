"""Fixtures shared by the data plane's tests: `stream`, the raw client of wire.py that reads responses one by
one; `proxy`, test_hostile's engine in front of a recording upstream (test_fuzz's regressions use it too)."""

from tests.proxy.test_hostile import proxy  # noqa: F401 (a fixture)
from tests.proxy.wire import stream  # noqa: F401 (a fixture)
