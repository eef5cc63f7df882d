"""The chaos test, short: backends as processes killed with SIGKILL and started again under keep-alive load, with
hostile requests, a junk 502, a silent 504, a slowloris cut and a health eject/restore between kills (the
harness is tests/chaos.py; run it long with `python -m tests.chaos --runs N --kills K`).

No GET may fail without a byte of a response (each could have been retried: one backend is always alive), no
POST may reach a backend twice, and no refused request may reach one. The backends close idle keep-alive
connections after 20 ms and end half of their responses with `Connection: close`: pooled connections die in
the pool, and requests are in flight on new connections when a backend is killed. Before the fixes, the
first counted as failures and got the healthy backend ejected (hundreds of 503s a run); the second were
refused by the retry budget (502s).
"""

from __future__ import annotations

import pytest

from tests.chaos import HOSTILE, Chaos

KILLS = 5
DEADLINE = 30.0  # seconds of kills; a round started before it finishes (each wait is bounded too)


@pytest.mark.slow
async def test_killed_backends_cost_get_clients_nothing_and_posts_are_never_sent_twice(tmp_path):
    chaos = Chaos(tmp_path, kills=KILLS, clients=10, deadline=DEADLINE, seed=13, idle=0.02, close_share=0.5)
    outcome = await chaos.run()
    report = "\n".join([outcome.summary(), *outcome.problems, *outcome.failures[:40]])
    assert outcome.problems == [], report
    assert outcome.kills >= 3, report  # enough of the test ran
    assert outcome.counts["POST reached a backend"] > 0, report
    assert outcome.counts["hostile refused"] == outcome.kills * len(HOSTILE), report
    assert outcome.snapshot["retries_in_flight"] == 0, report
    assert outcome.snapshot["in_flight"] == 0, report
