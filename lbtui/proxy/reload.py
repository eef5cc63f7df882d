"""Reload: apply a new, validated Config to a running Engine with no failed request.

What happens to each part (docs/operations.md, "Reload", says the same for operators):

- Listeners are compared by (name, bind, mode, tls files, service). An unchanged listener keeps its socket
  (never closed, not even for a moment). A new one opens. A removed one stops accepting; its idle
  connections close and a busy one closes after its current exchange (the reply says `Connection: close`);
  tcp connections and tunnels run until they end. A changed one on another address opens the new socket
  before the old one closes; on the same address it closes the old socket and binds the new one at once
  (no await in between: connection attempts in that instant are refused, the only gap a reload can make).
  Every new socket is bound and every TLS file loaded before anything changes: if one fails, the reload is
  refused whole (ReloadRefused) and the running config stays. So is a sticky `secret_env` that is not set.
- Services: new ones start; removed ones go (their backends drain and are dropped once idle, their queued
  requests are answered 503, their routes are gone with the new config). A kept service takes the new
  settings at once (timeouts, retries, outlier, slow start, max_connections, sticky, panic, ramp, ...);
  its health checks restart only when `health` changed; its algorithm is rebuilt only when it changed.
- Backends of a kept service go through the Controller with actor "reload", so every change is an audit
  event: added; removed (drained first); a changed address is a remove and an add (the old one drains under
  the name `NAME~old` while the new one takes the name); a changed group or weight applies in place.
- Runtime decisions win over the config (as the state file's do at start, core/persist.py): a value changed
  at runtime (a weight, a state, the algorithm, the split; a backend added or removed by ctl) stays as it
  is; the config's value applies where the running value is still the old config's. Backends added at
  runtime are left alone; config backends removed at runtime stay removed.
- Routes, consumers (API keys), CORS, rate limits (new buckets), caches (new, empty), trusted proxies and
  [limits]: a new Router is built and swapped in one assignment. A request already routed holds its route
  and finishes on the old config; route numbers carry over by route name. [limits] apply to new connections,
  and so do a kept listener's request rules (upgrades, escaped_slashes, headers_with_underscores, forwarded:
  a ClientConnection reads them from engine.listener_configs when it is made).
- [admin], [state] and [access_log] are not changed by a reload: the result says a restart is needed.

Everything runs in one call on the engine's loop with no await, so the data plane never sees half a reload.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lbtui.config import BackendConfig, Config, ConfigIssue, ListenerConfig, ServiceConfig
from lbtui.core.balancer import route_view
from lbtui.core.control import ControlError, Event, ReloadRefused, ReloadResult
from lbtui.core.model import AdminState, Health, RouteStats, Service
from lbtui.core.persist import capture
from lbtui.features import missing_sticky_secrets
from lbtui.gateway.auth import ApiKeys
from lbtui.gateway.routing import Router
from lbtui.http import TrustedProxies

if TYPE_CHECKING:
    from lbtui.proxy.connection import ClientConnection
    from lbtui.proxy.engine import Engine

ACTOR = "reload"
# Service settings compared to say what changed (backends, algorithm and split are handled one by one).
_SETTINGS = tuple(
    f.name
    for f in dataclasses.fields(ServiceConfig)
    if f.name not in ("name", "backends", "algorithm", "split")
)


def listener_key(listener: ListenerConfig) -> tuple[Any, ...]:
    """What a listener's socket depends on: equal keys keep the socket across a reload."""
    tls = (listener.tls.cert, listener.tls.key) if listener.tls is not None else None
    return (listener.name, listener.host, listener.port, listener.mode, tls, listener.service)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening, non-blocking socket on host:port, bound now (so that a failure is known before anything
    changes). OSError when it cannot be bound."""
    infos = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
    )
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Apply:
    def __init__(self, engine: Engine, new: Config) -> None:
        self.engine = engine
        self.old = engine.config
        self.new = new
        self.balancer = engine.balancer
        self.controller = engine.controller
        self.result = ReloadResult(new.source)

    # -- bookkeeping --------------------------------------------------------------------------------------
    def record(self, action: str, target: str, before: Any, after: Any, note: str = "") -> None:
        event = self.controller.record(ACTOR, action, target, before, after, undoable=False, note=note)
        self.result.events.append(event)

    def control(self, text: str, change: Callable[..., Event], *args: Any) -> bool:
        """A change through the Controller (actor "reload"); a refusal becomes a warning."""
        try:
            event = change(*args, ACTOR)
        except ControlError as error:
            self.result.warnings.append(f"{text}: {error}")
            return False
        self.result.events.append(event)
        self.result.changes.append(text)
        return True

    # -- listeners, before anything changes ---------------------------------------------------------------
    def prepare_listeners(self) -> None:
        """Load TLS files and bind the sockets that do not clash with a running one; refuse on a failure."""
        engine = self.engine
        old = {listener.name: listener for listener in self.old.listeners}
        self.kept: list[ListenerConfig] = []
        self.opened: list[tuple[ListenerConfig, socket.socket | None, Callable[[], asyncio.Protocol]]] = []
        self.closed: list[ListenerConfig] = []
        issues: list[ConfigIssue] = []
        running = {
            (listener.host, listener.port)
            for listener in self.old.listeners
            if listener.port != 0 and listener.name in engine.listener_servers
        }
        for index, listener in enumerate(self.new.listeners):
            before = old.get(listener.name)
            if before is not None and listener_key(before) == listener_key(listener):
                self.kept.append(listener)
                continue
            if before is not None:
                self.closed.append(before)
            try:
                factory = engine.protocol_factory(listener)
            except OSError as error:
                issues.append(ConfigIssue(self.new.source, f"listeners[{index}].tls", str(error)))
                continue
            sock: socket.socket | None = None
            if (listener.host, listener.port) not in running:
                try:
                    sock = bind_socket(listener.host, listener.port)
                except OSError as error:
                    issues.append(
                        ConfigIssue(
                            self.new.source,
                            f"listeners[{index}].bind",
                            f"cannot listen on {listener.host}:{listener.port}: {error.strerror or error}",
                        )
                    )
                    continue
            self.opened.append((listener, sock, factory))
        names = {listener.name for listener in self.new.listeners}
        self.closed.extend(listener for name, listener in old.items() if name not in names)
        if issues:
            for _, sock, _ in self.opened:
                if sock is not None:
                    sock.close()
            raise ReloadRefused(issues)

    def swap_listeners(self) -> None:
        """New sockets start serving before the old ones close (they are bound and listening already, so no
        connection attempt is refused); a socket on the address of one that closes is bound right after it."""
        engine = self.engine
        for listener in self.kept:
            engine.listener_configs[listener.name] = listener
        opened = {listener.name for listener, _, _ in self.opened}
        for listener, sock, factory in self.opened:
            if sock is not None:
                self._open(listener, sock, factory)
        for listener in self.closed:
            if listener.name not in opened:
                engine.stop_listener(listener.name)
                self.result.changes.append(f"listener {listener.name}: removed (its connections finish)")
                self.record("listener", listener.name, listener_text(listener), None)
        for listener, sock, factory in self.opened:
            if sock is None:  # on the address of one that closes: closed, then bound at once
                engine.stop_listener(listener.name)
                try:
                    sock = bind_socket(listener.host, listener.port)
                except OSError as error:
                    self.result.warnings.append(f"listener {listener.name}: cannot listen again: {error}")
                    continue
                self._open(listener, sock, factory)

    def _open(
        self, listener: ListenerConfig, sock: socket.socket, factory: Callable[[], asyncio.Protocol]
    ) -> None:
        engine = self.engine
        if listener.name in engine.listener_servers:  # changed on another address: the old one goes after
            engine.stop_listener(listener.name)
        engine.start_listener(listener, sock, factory)
        before = next((c for c in self.closed if c.name == listener.name), None)
        url = engine.url(listener.name)
        if before is None:
            self.result.changes.append(f"listener {listener.name}: added on {url}")
            self.record("listener", listener.name, None, listener_text(listener))
        else:
            self.result.changes.append(f"listener {listener.name}: changed, now {url}")
            self.record("listener", listener.name, listener_text(before), listener_text(listener))

    # -- services -----------------------------------------------------------------------------------------
    def services(self) -> None:
        balancer = self.balancer
        new = {s.name: s for s in self.new.services}
        for name in [n for n in balancer.services if n not in new]:
            self.remove_service(balancer.services[name])
        for name, config in new.items():
            service = balancer.services.get(name)
            if service is None:
                self.add_service(config)
            else:
                self.update_service(service, config)

    def add(self, service: str, name: str, wanted: BackendConfig, weight: int, change: str) -> None:
        """A backend of the new file that is not running (new, or at a new address): take its name back from
        a draining one, add it, and give it the file's state."""
        self.free_name(name)
        added = self.control(
            change,
            self.controller.add_backend,
            service,
            name,
            _address(wanted.host, wanted.port),
            wanted.group,
            weight,
        )
        if added and wanted.state != AdminState.READY.value:
            self.control(f"backend {name}: {wanted.state}", self.controller.set_state, name, wanted.state)

    def free_name(self, name: str) -> None:
        """Make room for a backend called `name`: the one that has it is removed (drained under NAME~old)."""
        backend = self.balancer.backends.get(name)
        if backend is None:
            return
        if backend.remove_deadline is None:
            self.control(f"backend {name}: removed (replaced)", self.controller.remove_backend, name)
        if self.balancer.backends.get(name) is backend:  # still draining: it gives its name up
            self.engine.health.remove(backend)
            new_name = f"{name}~old"
            n = 1
            while new_name in self.balancer.backends:
                n += 1
                new_name = f"{name}~old{n}"
            del self.balancer.backends[name]
            backend.name = new_name
            self.balancer.backends[new_name] = backend

    def add_service(self, config: ServiceConfig) -> None:
        engine, balancer = self.engine, self.balancer
        for b in config.backends:
            self.free_name(b.name)
        service = Service(config, balancer.clock())
        balancer.services[service.name] = service
        for backend in service.backends:
            balancer.backends[backend.name] = backend
            backend.on_outlier = self.controller._outlier
            engine.health.add(backend)
        service.changed()
        names = ", ".join(b.name for b in service.backends) or "no backends"
        self.result.changes.append(f"service {service.name}: added ({names})")
        self.record("service", service.name, None, {"backends": [b.name for b in service.backends]})

    def remove_service(self, service: Service) -> None:
        for backend in list(service.backends):
            if backend.remove_deadline is None:
                self.control(f"backend {backend.name}: removed", self.controller.remove_backend, backend.name)
            self.engine.health.remove(backend)
        queue = service.queue
        while queue:
            exchange = queue.popleft()
            if not exchange.done:
                exchange.queue_expired()  # its route is gone: 503, as a full queue answers
        del self.balancer.services[service.name]
        self.result.changes.append(f"service {service.name}: removed (its backends drain)")
        self.record("service", service.name, {"backends": [b.name for b in service.backends]}, None)

    def update_service(self, service: Service, config: ServiceConfig) -> None:
        balancer, controller = self.balancer, self.controller
        old = service.config
        name = service.name
        runtime = capture({name: service}).get(name, {})
        runtime_backends: dict[str, dict[str, Any]] = runtime.get("backends", {})
        removed_at_runtime = set(runtime.get("removed", ()))
        old_backends = {b.name: b for b in old.backends}
        new_backends = {b.name: b for b in config.backends}

        # Settings first: backends added below take the new service's limits (Service.adopt). Its backends
        # come last: the Controller's add_backend refuses a name the service's config already has.
        service.config = dataclasses.replace(config, backends=())
        service.response_timeout = config.timeouts.response
        service.backup_group = config.backup_group
        for backend in service.backends:
            backend.outlier = config.outlier
        changed = [key for key in _SETTINGS if getattr(old, key) != getattr(config, key)]
        if changed:
            self.result.changes.append(f"service {name}: {', '.join(changed)} changed")
            self.record(
                "settings",
                name,
                {key: _plain(getattr(old, key)) for key in changed},
                {key: _plain(getattr(config, key)) for key in changed},
            )
        if old.health != config.health:
            for backend in service.backends:
                self.engine.health.remove(backend)
                if config.health is None:  # no checks any more: what they last saw no longer holds
                    backend.health, backend.health_count, backend.health_of = Health.UP, 0, 0
                    backend.checks = ()
                self.engine.health.add(backend)
        service.changed()

        for backend_name in old_backends:
            if backend_name in new_backends:
                continue
            going = balancer.backends.get(backend_name)
            if going is not None and going.service == name and going.remove_deadline is None:
                self.control(
                    f"backend {backend_name}: removed (drains first)", controller.remove_backend, backend_name
                )
        for backend_name, wanted in new_backends.items():
            known = old_backends.get(backend_name)
            present = balancer.backends.get(backend_name)
            if known is None or present is None or present.service != name:
                if known is not None and backend_name in removed_at_runtime:
                    continue  # removed at runtime: stays removed
                if (
                    present is not None
                    and present.service == name
                    and present.remove_deadline is None
                    and (present.host, present.port, present.group)
                    == (wanted.host, wanted.port, wanted.group)
                ):
                    continue  # added at runtime as the config has it now: it is a config backend from now on
                address = _address(wanted.host, wanted.port)
                self.add(
                    name,
                    backend_name,
                    wanted,
                    wanted.weight,
                    f"backend {backend_name}: added ({address}, group {wanted.group}, weight {wanted.weight})",
                )
                continue
            before, backend = known, present
            if (wanted.host, wanted.port) != (before.host, before.port):
                address = _address(wanted.host, wanted.port)
                self.add(
                    name,
                    backend_name,
                    wanted,
                    runtime_backends.get(backend_name, {}).get("weight", wanted.weight),
                    f"backend {backend_name}: address {_address(before.host, before.port)} -> {address}",
                )
                continue
            if wanted.group != before.group and backend.group == before.group:
                self.result.changes.append(f"backend {backend_name}: group {before.group} -> {wanted.group}")
                self.record("group", backend_name, before.group, wanted.group)
                backend.group = wanted.group
                service.changed()
            if wanted.weight != before.weight and backend.weight == before.weight:
                self.control(
                    f"backend {backend_name}: weight {before.weight} -> {wanted.weight}",
                    controller.set_weight,
                    backend_name,
                    wanted.weight,
                )
            if wanted.state != before.state and backend.admin_state.value == before.state:
                self.control(
                    f"backend {backend_name}: state {before.state} -> {wanted.state}",
                    controller.set_state,
                    backend_name,
                    wanted.state,
                )

        if config.algorithm != old.algorithm and service.algorithm_name == old.algorithm:
            self.control(
                f"service {name}: algorithm {old.algorithm} -> {config.algorithm}",
                controller.set_algorithm,
                name,
                config.algorithm,
            )
        service.config = config
        if config.split != old.split and "split" not in runtime:
            split = dict(config.split) if config.split else {}
            self.control(
                f"service {name}: split {_split_text(config.split)}", controller.set_split, name, split
            )

    # -- the gateway ----------------------------------------------------------------------------------------
    def gateway(self) -> None:
        engine, balancer, new = self.engine, self.balancer, self.new
        now = balancer.clock()
        stats = balancer.route_stats
        names = [route.name for route in new.routes]
        for route in new.routes:
            if route.name not in stats:
                stats[route.name] = RouteStats(now, route.name)
        for name in [n for n in stats if n not in names]:
            del stats[name]  # requests under way on it hold their own reference
        services = {s.name: balancer.services[s.name] for s in new.services}
        router = Router(new.routes, services, stats, balancer.unmatched)
        old_routes = {route.name: route for route in self.old.routes}
        new_routes = {route.name: route for route in new.routes}
        for name in old_routes.keys() - new_routes.keys():
            self.result.changes.append(f"route {name}: removed")
            self.record("route", name, route_view(old_routes[name]).match, None)
        for name, route in new_routes.items():
            before = old_routes.get(name)
            if before is None:
                self.result.changes.append(f"route {name}: added")
                self.record("route", name, None, route_view(route).match)
            elif before != route:
                self.result.changes.append(f"route {name}: changed")
                self.record("route", name, route_view(before).match, route_view(route).match)
        if self.old.consumers != new.consumers:
            self.result.changes.append(f"consumers: {len(new.consumers)} (was {len(self.old.consumers)})")
            self.record("consumers", "consumers", len(self.old.consumers), len(new.consumers))
        if self.old.limits != new.limits:
            self.result.changes.append("limits: changed (new connections take them)")
            self.record("limits", "limits", _plain(self.old.limits), _plain(new.limits))
        # One assignment each, with no await between them: a request sees the old gateway or the new one.
        engine.api_keys = ApiKeys(new.consumers)
        engine.trusted_proxies = {
            listener.name: TrustedProxies(listener.trusted_proxies)
            for listener in new.listeners
            if listener.trusted_proxies
        }
        balancer.routes = tuple(route_view(route) for route in new.routes)
        engine.router = router

    def restart_needed(self) -> None:
        old, new = self.old, self.new
        if old.admin != new.admin:
            self.result.restart_needed.append(
                "admin: the admin API keeps its address and token until a restart"
            )
        if old.state != new.state:
            self.result.restart_needed.append(
                f"state: runtime state is still written to {old.state.file or 'nowhere'} until a restart"
            )
        if old.access_log != new.access_log:
            self.result.restart_needed.append(
                "access_log: the access log keeps its file and format until a restart"
            )


def listener_text(listener: ListenerConfig) -> str:
    text = f"{listener.mode} {_address(listener.host, listener.port)}"
    if listener.tls is not None:
        text += " tls"
    if listener.service:
        text += f" -> {listener.service}"
    return text


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_text(split: tuple[tuple[str, int], ...] | None) -> str:
    return " ".join(f"{group}={weight}" for group, weight in split) if split else "none"


def _plain(value: Any) -> Any:
    """A config value as JSON-able data for an audit event."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def apply(engine: Engine, new: Config) -> ReloadResult:
    """Apply `new` (already validated) to the running engine. ReloadRefused (nothing changed) when a listener
    cannot be opened. Call on the engine's loop."""
    missing = missing_sticky_secrets(new)
    if missing:  # checked at start by `lbtui check` and `serve`; a reload must not switch keys silently
        raise ReloadRefused([ConfigIssue(new.source, item.key_path, item.message) for item in missing])
    work = _Apply(engine, new)
    work.prepare_listeners()  # may refuse: nothing has changed yet
    work.restart_needed()
    work.services()
    work.gateway()
    engine.config = dataclasses.replace(
        new, admin=work.old.admin, state=work.old.state, access_log=work.old.access_log
    )
    engine.balancer.config = engine.config
    engine.tick_interval = engine.tick_interval_for(new)
    work.swap_listeners()
    return work.result


def retire(conn: ClientConnection) -> None:
    """A connection of a listener that is going: close it now if idle, else after its last exchange."""
    if conn.idle:
        conn.close()
        return
    last = conn.parsing or (conn.pending[-1] if conn.pending else conn.current)
    if last is not None:
        last.close_after = True
