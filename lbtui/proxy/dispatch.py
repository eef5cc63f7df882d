"""Dispatch: an exchange's attempts at its service's backends, their retries, and the queue.

`attempt` picks a backend (the sticky session's, else the service's algorithm: core/algorithms.py) and sends
the request on an idle pooled connection or a new one (upstream.Pool); with every backend that could take it
at max_connections it waits in the service's queue (`wait_for_room`; core Service.serve_queue tries it again
when one has room). A failed attempt (`attempt_failed`, `retry_5xx`) goes to another backend while the rules
of proxy/exchange.py's docstring allow, within `retries.attempts` and the retry budget (`retry_budget`);
else the failure is answered. Every attempt's end is counted once, through Service.attempt_ended.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from lbtui.http import IDEMPOTENT_METHODS
from lbtui.proxy.upstream import CONNECT_FAILURE, RESET, TIMEOUT

if TYPE_CHECKING:
    from lbtui.core.model import Backend, Service
    from lbtui.proxy.exchange import Exchange
    from lbtui.proxy.upstream import UpstreamConnection


def attempt(ex: Exchange, same_backend: Backend | None = None, picked: Backend | None = None) -> None:
    """Send the request to a backend: `same_backend` on a new connection (after a kept-alive one was found
    dead), `picked` (chosen already) or the one the service picks, on a kept-alive connection if one is idle.
    """
    service = ex.service
    assert service is not None
    bound = ex.bound
    if (
        bound is not None
        and same_backend is None
        and picked is None
        and not bound_takes_it(ex, service, bound)
    ):
        if ex.bound is not None:
            return  # it waits in the queue for its own backend
        bound = None
    backend = (
        same_backend or picked or bound or service.pick(hash_key(ex) if service.hashing else None, ex.tried)
    )
    if backend is None:
        if service.config.max_connections is not None and service.has_eligible(ex.tried):
            wait_for_room(ex, service)  # every backend that could take it is at max_connections
            return
        failure = ex.failure
        if failure is not None:  # a retry found no backend left: answer as the last attempt failed
            ex.retry_verdict = "no-backend-left"
            ex.respond_error(failure[0], failure[1], retry_after=failure[0] == 503)
            return
        service.unrouted += 1
        ex.termination = "no-backend"
        ex.respond_error(503, f"no backend of service {service.name!r} is available", retry_after=True)
        return
    ex.backend = backend
    backend.in_flight += 1
    # A backend's latency is its own attempt's (from here), never the time the request spent queued or on
    # other backends before: a retry after another's timeout or slow 5xx would make the healthy one look slow
    # (Peak-EWMA takes a slower sample at once), and send traffic to the failing one.
    now = ex.attempt_started = ex.client.engine.now()
    pool = backend.pool
    if pool is None:
        pool = ex.client.engine.make_pool(backend)
    if same_backend is None:
        idle = pool.idle
        while idle:  # the newest idle connection first (LIFO keeps few connections warm)
            conn = idle.pop()
            if conn.closed:
                continue
            if ex.method not in IDEMPOTENT_METHODS and not conn.still_open():
                conn.close()  # found dead: what could not be sent again is not sent on it
                continue
            pool.active.add(conn)
            ex.attach(conn, reused=True)
            return
    ex.connect_started = now
    pool.connect(ex)


def bound_takes_it(ex: Exchange, service: Service, bound: Backend) -> bool:
    """Whether the backend its sticky cookie names takes this attempt. If not, `bound` is cleared (the
    session moves: the response sets the cookie again), or, when that backend is only full, the exchange
    waits for it in the queue (HAProxy queues a persistent request on its server)."""
    if bound in ex.tried or not service.keeps(bound):
        if bound not in ex.tried:
            service.sticky_moved += 1  # its state changed while it waited
        ex.bound = None  # (a retry goes to another backend as for any request)
        return False
    limit = service.config.max_connections
    if limit is not None and bound.in_flight >= limit:
        wait_for_room(ex, service)
        return False
    bound.sticky_requests += 1
    return True


def wait_for_room(ex: Exchange, service: Service) -> None:
    """Queue for a backend under max_connections (HAProxy's server queue); 503 at once when it is full."""
    queue = service.queue
    if queue is None:
        queue = service.queue = deque()
    if ex.queue_deadline:  # it was waiting already and still finds no room: back to the head
        queue.appendleft(ex)
        return
    if len(queue) >= service.config.max_queue:
        for waiting in [w for w in queue if w.done]:
            queue.remove(waiting)  # clients that went away while waiting
    if len(queue) >= service.config.max_queue:
        service.queue_full += 1
        service.unrouted += 1
        ex.termination = "queue-full"
        ex.respond_error(503, "every backend is at max_connections and the queue is full", True)
        return
    queue.append(ex)
    service.queued += 1
    ex.queue_deadline = ex.client.engine.now() + service.config.timeouts.queue


def queue_expired(ex: Exchange) -> None:
    """Waited in the queue for timeouts.queue: 503, as HAProxy answers a `timeout queue`."""
    ex.queue_deadline = 0.0
    service = ex.service
    if service is not None:
        service.unrouted += 1
    ex.termination = "queue-timeout"
    ex.respond_error(503, "no backend had room in time (max_connections)", retry_after=True)


def attempt_failed(ex: Exchange, kind: str, reason: str, cause: str, reused: bool = False) -> None:
    """An attempt failed: `kind` as retries.on names it, `cause` for the access log (failed_tries).

    Where nothing of a response reached the client, the request goes to another backend as far as the rules
    allow (proxy/exchange.py's invariants; docs/config.md, retries), else the failure is answered. A response cut
    after its head was forwarded can only be aborted."""
    if ex.done:
        return
    ex.deadline = 0.0
    backend = ex.backend
    name = backend.name if backend is not None else "-"
    ex.failed_tries = (*ex.failed_tries, f"{name}:{cause}/reused" if reused else f"{name}:{cause}")
    ex.termination = cause
    if ex.response_started:
        # Part of the response reached the client: it cannot be replaced, and must not look whole.
        if backend is not None:
            backend.aborted += 1
        ex.status = 502
        ex.close_after = True
        ex.client.abort()
        ex.finish()
        return
    ex.failure = (503 if kind == CONNECT_FAILURE else 504 if kind == TIMEOUT else 502, reason)
    service = ex.service
    assert service is not None
    retries = ex.retries_config or service.config.retries
    resendable = ex.method in IDEMPOTENT_METHODS and ex.replay is not None
    # A kept-alive connection that ends before any byte of a response is most often the pool's race with
    # the backend's keep-alive timeout (it closed the connection while it sat idle): the request goes to
    # the same backend once more on a new connection, and only that attempt counts for the backend (counted
    # twice, a race would count as a failure, and outlier detection would eject a healthy backend).
    stale = reused and kind == RESET and not ex.fresh_retry and resendable
    if backend is not None:
        ex.backend = None
        now = ex.client.engine.now()
        service.attempt_ended(backend, 0, ex.attempt_started, now, 0, counted=not stale)
    if kind == CONNECT_FAILURE:
        # Nothing was sent: any method may go to the next backend.
        if backend is not None:
            ex.tried = (*ex.tried, backend)
        if len(ex.tried) <= max(len(service.backends), retries.attempts):
            attempt(ex)
            return
        ex.retry_verdict = "attempts-exhausted"
        ex.respond_error(503, reason, retry_after=True)
        return
    if stale and backend is not None:
        # Once more on a fresh connection to the same backend (not counted against attempts).
        ex.fresh_retry = True
        attempt(ex, same_backend=backend)
        return
    if backend is not None:
        ex.tried = (*ex.tried, backend)
    if not resendable:
        ex.retry_verdict = "not-idempotent" if ex.method not in IDEMPOTENT_METHODS else "body-not-kept"
    elif kind not in retries.on:
        ex.retry_verdict = f"{kind}-not-in-retries-on"
    elif len(ex.tried) > retries.attempts:
        ex.retry_verdict = "attempts-exhausted"
    elif kind == RESET or ex.retrying or retry_budget(ex, service):
        # A connection closed or reset before any byte of a response is how a backend's death looks (and
        # the request cost the dead backend nothing): retried like a connect failure, outside the budget,
        # within attempts. The budget holds back retries of answers that came bad or late.
        service.retries += 1
        attempt(ex)
        return
    else:
        service.retries_refused += 1
        ex.retry_verdict = "budget-refused"
    if kind == TIMEOUT:
        ex.respond_error(504, reason)
    else:
        ex.respond_error(502, reason)


def retry_5xx(ex: Exchange, conn: UpstreamConnection, status: int) -> bool:
    """A 5xx head from the backend, before anything reached the client: with "5xx" in retries.on an
    idempotent request goes to another backend, within attempts and the budget, and this response is
    dropped (True: `conn` reads the rest of it on its own). The last attempt's 5xx is passed on (False)."""
    service = ex.service
    backend = ex.backend
    if (
        service is None
        or backend is None
        or ex.done
        or ex.informed
        or ex.upgrade
        or ex.method not in IDEMPOTENT_METHODS
        or ex.replay is None
    ):
        return False
    retries = ex.retries_config or service.config.retries
    if "5xx" not in retries.on:
        return False
    tried = (*ex.tried, backend)
    if len(tried) > retries.attempts:
        return False
    # The budget is asked before a backend is picked: a pick is a turn of the algorithm, and it may be a
    # joining backend's probe (Service.pick), which a retry the budget then refused would use up.
    if not ex.retrying and not budget_room(ex, service):
        if service.has_eligible(tried):
            service.retries_refused += 1
            ex.retry_verdict = "budget-refused"
        return False
    following = service.pick(hash_key(ex) if service.hashing else None, tried)
    if following is None:
        return False  # no backend left to try: this 5xx is the answer
    if not ex.retrying:
        retry_budget(ex, service)  # (room was checked above)
    ex.deadline = 0.0
    ex.failed_tries = (*ex.failed_tries, f"{backend.name}:{status}")
    ex.failure = (502, f"{backend.name} answered {status}")
    ex.tried = tried
    ex.upstream = None
    ex.backend = None
    service.attempt_ended(backend, status, ex.attempt_started, ex.client.engine.now(), 0)
    service.retries += 1
    attempt(ex, picked=following)
    return True


def retry_budget(ex: Exchange, service: Service) -> bool:
    """Envoy's retry budget: retries under way stay within budget_percent of the service's requests in
    flight (but min_retry_concurrency are always allowed), so a failing backend is not hit by a storm."""
    if not budget_room(ex, service):
        return False
    service.retries_in_flight += 1
    ex.retrying = True
    return True


def budget_room(ex: Exchange, service: Service) -> bool:
    """Whether the retry budget (_retry_budget) has room for one more retry now; takes nothing."""
    retries = ex.retries_config or service.config.retries
    active = sum(b.in_flight for b in service.backends) + 1  # + this one, between attempts
    allowed = max(retries.min_retry_concurrency, retries.budget_percent * active / 100.0)
    return service.retries_in_flight < allowed


def hash_key(ex: Exchange) -> bytes | None:
    service = ex.service
    assert service is not None
    return service.hash_key_of(ex.client_addr or ex.client.peer_host, ex.url, ex.headers)
