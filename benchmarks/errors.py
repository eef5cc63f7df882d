"""The two exceptions the runner turns into exit codes: StartError (2) and Interrupted (130)."""

from __future__ import annotations


class StartError(Exception):
    """Something could not be started (or died): exit 2 with the message."""


class Interrupted(Exception):
    """SIGTERM: treated like Ctrl-C."""
