"""Fixtures shared by the data plane's tests: `stream`, the raw client of test_review that reads responses one
by one."""

from tests.proxy.test_review import stream  # noqa: F401 (a fixture)
