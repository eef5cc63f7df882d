"""lbtui.config: TOML in, validated immutable objects out, and every mistake reported with a fix."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from lbtui import config as config_module
from lbtui.config import (
    ALGORITHMS,
    AdminConfig,
    AggregatePart,
    AuthConfig,
    BackendConfig,
    CacheConfig,
    Config,
    ConfigError,
    ConfigIssue,
    ConsumerConfig,
    CorsConfig,
    HeaderOps,
    HealthConfig,
    LimitsConfig,
    ListenerConfig,
    OutlierConfig,
    RateLimitConfig,
    RetriesConfig,
    RouteConfig,
    RouteMatch,
    ServiceConfig,
    StateConfig,
    StickyConfig,
    TimeoutsConfig,
    TLSConfig,
    load_config,
    parse_address,
    parse_backend,
    parse_config,
    parse_duration,
    parse_size,
)

MINIMAL = """
[services.shop]
[[services.shop.backends]]
name = "blue-1"
address = "127.0.0.1:9001"
"""

ALICE_SHA256 = "72ee9d4355ccb9d3a4c9dbf37382e38e75c1b1a225b5bd1f729ee91bbda30c20"

# Every snippet of the product design's config schema (../shared/ARCHITECTURE.md section 5) in one file, plus the commented-out alternatives (tls, jwt).
FULL_EXAMPLE = f"""
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
mode = "http"
tls = {{ cert = "cert.pem", key = "key.pem" }}

[[listeners]]
name = "pg"
bind = "[::1]:5433"
mode = "tcp"
service = "users"

[admin]
bind = "127.0.0.1:9901"
token_env = "LBTUI_ADMIN_TOKEN"

[services.shop]
algorithm = "round_robin"
split = {{ blue = 90, green = 10 }}
health = {{ path = "/healthz", interval = "2s", timeout = "1s", rise = 2, fall = 3 }}
timeouts = {{ connect = "2s", response = "30s", idle = "60s" }}
retries = {{ attempts = 2, on = ["connect-failure", "reset", "gateway-error"] }}
outlier = {{ consecutive_5xx = 5, base_ejection = "30s", max_ejected_percent = 50 }}
slow_start = "30s"
max_connections = 1024
sticky = {{ cookie = "lbtui_srv" }}
backup_group = "dr"

[[services.shop.backends]]
name = "blue-1"
address = "127.0.0.1:9001"
group = "blue"
weight = 1

[[services.shop.backends]]
name = "green-1"
address = "127.0.0.1:9002"
group = "green"

[[services.shop.backends]]
name = "dr-1"
address = "10.0.0.7:9001"
group = "dr"
state = "maint"

[services.users]
algorithm = "ewma"
health = {{ type = "tcp", interval = "500ms", timeout = "250ms" }}

[[services.users.backends]]
name = "users-1"
address = "localhost:9101"
weight = 3

[services.orders]
algorithm = "consistent_hash"
hash_key = "header:X-User"

[[services.orders.backends]]
name = "orders-1"
address = "127.0.0.1:9201"

[[consumers]]
name = "alice"
api_key_sha256 = "{ALICE_SHA256.upper()}"

[[consumers]]
name = "bob"
api_key_env = "BOB_KEY"

[[routes]]
name = "api"
match = {{ path_prefix = "/api", methods = ["GET", "post"], host = "API.local", headers = {{ "X-Tenant" = "a" }} }}
service = "shop"
strip_prefix = "/api"
request_headers = {{ set = {{ "X-Gateway" = "lbtui" }}, remove = ["X-Debug"] }}
response_headers = {{ set = {{ "X-Served-By" = "lbtui" }}, remove = ["Server"] }}
auth = {{ type = "api_key", header = "X-API-Key" }}
rate_limit = {{ rate = 10, per = "1s", burst = 20, key = "client_ip" }}
cors = {{ allow_origins = ["https://app.example"], allow_methods = ["GET"], allow_headers = ["Content-Type"], max_age = "10m" }}
cache = {{ ttl = "30s", max_entries = 1000 }}

[[routes]]
name = "profile"
match = {{ path = "/profile" }}
aggregate = [
  {{ service = "users", path = "/user/1", group = "user" }},
  {{ service = "orders", path = "/orders?user=1", group = "orders", allow = ["id", "total"] }},
]
timeout = "2s"

[[routes]]
match = {{ path_regex = "^/v[0-9]+/" }}
service = "orders"
auth = {{ type = "jwt", algorithms = ["HS256"], secret_env = "JWT_SECRET", issuer = "lbtui", audience = "api" }}
rate_limit = {{ rate = 5, key = "consumer" }}

[[routes]]
match = {{ path_prefix = "/keys" }}
service = "users"
auth = {{ type = "jwt", algorithms = ["RS256"], public_key_file = "jwt.pub" }}
rate_limit = {{ rate = 100, per = "1m", key = "header:X-Client" }}

[limits]
max_header_bytes = 16384
max_headers = 100
max_body = "100MiB"
header_timeout = "10s"
client_idle_timeout = "60s"
max_connections = 10000

[state]
file = "lbtui.state.json"
"""


@pytest.fixture
def problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], list[str]]:
    """Writes lbtui.toml, loads it by its relative name and returns every issue as the operator sees it."""
    monkeypatch.chdir(tmp_path)

    def run(text: str) -> list[str]:
        (tmp_path / "lbtui.toml").write_text(textwrap.dedent(text), encoding="utf-8")
        with pytest.raises(ConfigError) as caught:
            load_config("lbtui.toml")
        return [str(issue) for issue in caught.value.issues]

    return run


def issues_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return [str(issue) for issue in caught.value.issues]


def with_service(**service: Any) -> dict[str, Any]:
    body = {"backends": [{"name": "blue-1", "address": "127.0.0.1:9001"}], **service}
    return {"services": {"shop": body}}


# --- the whole example --------------------------------------------------------------------------------------


def test_full_example_parses_into_the_expected_objects(tmp_path: Path) -> None:
    path = tmp_path / "lbtui.toml"
    path.write_text(FULL_EXAMPLE, encoding="utf-8")
    issued = trustme.CA().issue_cert("localhost")  # the listener's tls files are read while validating
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))

    loaded = load_config(path)

    here = str(tmp_path)
    default_retries = RetriesConfig(attempts=2, on=("connect-failure", "reset", "gateway-error"))
    expected = Config(
        source=str(path),
        listeners=(
            ListenerConfig(
                name="web",
                host="127.0.0.1",
                port=8080,
                mode="http",
                tls=TLSConfig(cert=os.path.join(here, "cert.pem"), key=os.path.join(here, "key.pem")),
            ),
            ListenerConfig(name="pg", host="::1", port=5433, mode="tcp", service="users"),
        ),
        admin=AdminConfig(host="127.0.0.1", port=9901, token_env="LBTUI_ADMIN_TOKEN", enabled=True),
        services=(
            ServiceConfig(
                name="shop",
                algorithm="round_robin",
                backends=(
                    BackendConfig(name="blue-1", host="127.0.0.1", port=9001, group="blue", weight=1),
                    BackendConfig(name="green-1", host="127.0.0.1", port=9002, group="green"),
                    BackendConfig(name="dr-1", host="10.0.0.7", port=9001, group="dr", state="maint"),
                ),
                split=(("blue", 90), ("green", 10)),
                health=HealthConfig(path="/healthz", interval=2.0, timeout=1.0, rise=2, fall=3),
                timeouts=TimeoutsConfig(connect=2.0, response=30.0, idle=60.0),
                retries=default_retries,
                outlier=OutlierConfig(consecutive_5xx=5, base_ejection=30.0, max_ejected_percent=50),
                slow_start=30.0,
                max_connections=1024,
                sticky=StickyConfig(cookie="lbtui_srv"),
                backup_group="dr",
            ),
            ServiceConfig(
                name="users",
                algorithm="ewma",
                backends=(BackendConfig(name="users-1", host="localhost", port=9101, weight=3),),
                health=HealthConfig(type="tcp", interval=0.5, timeout=0.25),
            ),
            ServiceConfig(
                name="orders",
                algorithm="consistent_hash",
                backends=(BackendConfig(name="orders-1", host="127.0.0.1", port=9201),),
                hash_key="header:X-User",
            ),
        ),
        routes=(
            RouteConfig(
                name="api",
                match=RouteMatch(
                    path_prefix="/api",
                    methods=("GET", "POST"),
                    host="api.local",
                    headers=(("X-Tenant", "a"),),
                ),
                service="shop",
                strip_prefix="/api",
                request_headers=HeaderOps(set=(("X-Gateway", "lbtui"),), remove=("X-Debug",)),
                response_headers=HeaderOps(set=(("X-Served-By", "lbtui"),), remove=("Server",)),
                auth=AuthConfig(type="api_key", header="X-API-Key"),
                rate_limit=RateLimitConfig(rate=10, per=1.0, burst=20, key="client_ip"),
                cors=CorsConfig(
                    allow_origins=("https://app.example",),
                    allow_methods=("GET",),
                    allow_headers=("Content-Type",),
                    max_age=600.0,
                ),
                cache=CacheConfig(ttl=30.0, max_entries=1000),
            ),
            RouteConfig(
                name="profile",
                match=RouteMatch(path="/profile"),
                aggregate=(
                    AggregatePart(service="users", path="/user/1", group="user"),
                    AggregatePart(
                        service="orders", path="/orders?user=1", group="orders", allow=("id", "total")
                    ),
                ),
                timeout=2.0,
            ),
            RouteConfig(
                name="route2",
                match=RouteMatch(path_regex="^/v[0-9]+/"),
                service="orders",
                auth=AuthConfig(
                    type="jwt", algorithms=("HS256",), secret_env="JWT_SECRET", issuer="lbtui", audience="api"
                ),
                rate_limit=RateLimitConfig(rate=5, key="consumer"),
            ),
            RouteConfig(
                name="route3",
                match=RouteMatch(path_prefix="/keys"),
                service="users",
                auth=AuthConfig(
                    type="jwt", algorithms=("RS256",), public_key_file=os.path.join(here, "jwt.pub")
                ),
                rate_limit=RateLimitConfig(rate=100, per=60.0, key="header:X-Client"),
            ),
        ),
        consumers=(
            ConsumerConfig(name="alice", api_key_sha256=ALICE_SHA256),
            ConsumerConfig(name="bob", api_key_env="BOB_KEY"),
        ),
        limits=LimitsConfig(
            max_header_bytes=16384,
            max_headers=100,
            max_body=100 * 1024 * 1024,
            header_timeout=10.0,
            client_idle_timeout=60.0,
            max_connections=10000,
        ),
        state=StateConfig(file=os.path.join(here, "lbtui.state.json")),
    )
    assert loaded == expected
    assert loaded.service("orders").hash_key == "header:X-User"


def test_relative_paths_are_resolved_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "lbtui.toml").write_text(
        MINIMAL + '[state]\nfile = "run/state.json"\n', encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)

    loaded = load_config(os.path.join("conf", "lbtui.toml"))

    assert loaded.source == os.path.join("conf", "lbtui.toml")
    assert loaded.state.file == str(tmp_path / "conf" / "run" / "state.json")
    as_dict = parse_config({**with_service(), "state": {"file": "s.json"}}, base_dir="/etc/lbtui")
    assert as_dict.state.file == os.path.join("/etc/lbtui", "s.json")
    assert parse_config({**with_service(), "state": {"file": "s.json"}}).state.file == "s.json"


# --- defaults and immutability ------------------------------------------------------------------------------


def test_defaults_of_a_minimal_config(tmp_path: Path) -> None:
    path = tmp_path / "lbtui.toml"
    path.write_text(MINIMAL, encoding="utf-8")

    loaded = load_config(path)

    assert loaded.listeners == (ListenerConfig(name="web", host="127.0.0.1", port=8080, mode="http"),)
    assert loaded.admin == AdminConfig(host="127.0.0.1", port=9901, token_env=None, enabled=False)
    assert loaded.services == (
        ServiceConfig(
            name="shop",
            backends=(BackendConfig(name="blue-1", host="127.0.0.1", port=9001, group="default", weight=1),),
        ),
    )
    shop = loaded.service("shop")
    assert shop.algorithm == "round_robin"
    assert shop.split is None
    assert shop.health is None
    assert shop.timeouts == TimeoutsConfig(connect=2.0, response=30.0, idle=60.0)
    assert shop.retries == RetriesConfig(attempts=2, on=("connect-failure", "reset", "gateway-error"))
    assert (shop.outlier, shop.sticky, shop.backup_group, shop.hash_key, shop.max_connections) == (None,) * 5
    assert shop.slow_start == 0.0
    assert loaded.routes == ()
    assert loaded.consumers == ()
    assert loaded.limits == LimitsConfig(
        max_header_bytes=16384,
        max_headers=100,
        max_body=104857600,
        header_timeout=10.0,
        client_idle_timeout=60.0,
        max_connections=10000,
    )
    assert loaded.state == StateConfig(file=None)


def test_default_names_and_an_empty_admin_table() -> None:
    loaded = parse_config(
        {
            **with_service(),
            "listeners": [{"bind": "127.0.0.1:8080"}, {"bind": "127.0.0.1:0"}],
            "admin": {},
            "routes": [{"match": {}, "service": "shop"}],
        }
    )

    assert [listener.name for listener in loaded.listeners] == ["listener0", "listener1"]
    assert loaded.listeners[1].port == 0
    assert loaded.admin == AdminConfig(enabled=True)
    assert loaded.routes[0] == RouteConfig(name="route0", match=RouteMatch(), service="shop")
    assert loaded.source == "<config>"


def test_health_defaults_and_expect_status_forms() -> None:
    def expect(value: object) -> tuple[int, int]:
        health = parse_config(with_service(health={"expect_status": value})).service("shop").health
        assert health is not None
        return health.expect_status

    assert parse_config(with_service(health={})).service("shop").health == HealthConfig(
        type="http", path="/healthz", interval=2.0, timeout=1.0, rise=2, fall=3, expect_status=(200, 399)
    )
    assert expect(204) == (204, 204)
    assert expect("2xx") == (200, 299)
    assert expect("200-399") == (200, 399)
    assert expect([200, 302]) == (200, 302)


def test_config_objects_are_immutable() -> None:
    loaded = parse_config(with_service(split={"default": 1}))
    shop = loaded.service("shop")

    with pytest.raises(dataclasses.FrozenInstanceError):
        shop.algorithm = "random"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        shop.backends[0].weight = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.limits.max_body = 1  # type: ignore[misc]
    assert isinstance(shop.backends, tuple)
    assert isinstance(shop.split, tuple)
    assert isinstance(loaded.listeners, tuple)
    assert not hasattr(shop, "__dict__")  # slots
    assert hash(loaded) == hash(parse_config(with_service(split={"default": 1})))


def test_service_lookup_raises_key_error_for_an_unknown_name() -> None:
    with pytest.raises(KeyError):
        parse_config(with_service()).service("nope")


def test_config_validates_against_the_algorithms_module() -> None:
    from lbtui.core import algorithms

    assert ALGORITHMS is algorithms.ALGORITHMS
    for algorithm in ALGORITHMS:
        hash_key = {"hash_key": "path"} if algorithm == "consistent_hash" else {}
        assert (
            parse_config(with_service(algorithm=algorithm, **hash_key)).service("shop").algorithm == algorithm
        )


# --- errors, one kind per test ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "servics = 1\n" + MINIMAL,
            "lbtui.toml: servics: unknown key; did you mean 'services'?",
        ),
        (
            '[services.shop]\nalgoritm = "p2c"\n',
            "lbtui.toml: services.shop.algoritm: unknown key; did you mean 'algorithm'?",
        ),
        (
            MINIMAL + "wieght = 2\n",
            "lbtui.toml: services.shop.backends[0].wieght: unknown key; did you mean 'weight'?",
        ),
        (
            '[[listeners]]\nbind = "127.0.0.1:8080"\nmdoe = "http"\n' + MINIMAL,
            "lbtui.toml: listeners[0].mdoe: unknown key; did you mean 'mode'?",
        ),
        (
            MINIMAL + '[services.shop.health]\nintervall = "1s"\n',
            "lbtui.toml: services.shop.health.intervall: unknown key; did you mean 'interval'?",
        ),
        (
            MINIMAL + '[[routes]]\nmatch = { path_prefx = "/" }\nservice = "shop"\n',
            "lbtui.toml: routes[0].match.path_prefx: unknown key; did you mean 'path_prefix'?",
        ),
        (
            MINIMAL + "[limits]\nzzz = 1\n",
            "lbtui.toml: limits.zzz: unknown key; allowed keys: 'max_header_bytes', 'max_headers', "
            "'max_body', 'header_timeout', 'client_idle_timeout', 'max_connections'",
        ),
    ],
    ids=["top", "service", "backend", "listener", "health", "route-match", "no-close-match"],
)
def test_unknown_key_is_reported_with_did_you_mean(
    problems: Callable[[str], list[str]], text: str, expected: str
) -> None:
    assert problems(text) == [expected]


def test_issue_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lbtui.toml").write_text('[services.shop]\nalgoritm = "p2c"\n', encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_config("lbtui.toml")

    assert caught.value.issues == (
        ConfigIssue(
            file="lbtui.toml",
            key_path="services.shop.algoritm",
            message="unknown key",
            hint="did you mean 'algorithm'?",
        ),
    )


def test_unknown_key_with_an_odd_name_is_quoted_in_the_key_path() -> None:
    assert issues_of({**with_service(), "my key": 1}) == [
        "<config>: \"my key\": unknown key; allowed keys: 'listeners', 'admin', 'services', 'routes', "
        "'consumers', 'limits', 'state', 'access_log'"
    ]


@pytest.mark.parametrize(
    ("backend_line", "expected"),
    [
        ('weight = "3"', "weight: expected an integer, got string '3'; write 3 without quotes"),
        ("weight = 1.5", "weight: expected an integer, got float 1.5"),
        ("weight = true", "weight: expected an integer, got boolean true"),
        ("group = 7", "group: expected a string, got integer 7"),
        ("state = []", "state: expected a string, got array"),
        ("name = {}", "name: expected a string, got table"),
    ],
)
def test_wrong_type_names_the_toml_type(
    problems: Callable[[str], list[str]], backend_line: str, expected: str
) -> None:
    text = '[[services.shop.backends]]\naddress = "127.0.0.1:9001"\n'
    if not backend_line.startswith("name"):
        text += 'name = "b"\n'
    assert problems(text + backend_line + "\n") == [f"lbtui.toml: services.shop.backends[0].{expected}"]


def test_wrong_kind_of_section(problems: Callable[[str], list[str]]) -> None:
    assert problems("[listeners]\nbind = 1\n[[services]]\nname = 'shop'\n") == [
        "lbtui.toml: listeners: expected an array of tables, got table; write [[listeners]] tables",
        "lbtui.toml: services: expected a table, got array; write [services.NAME] tables, not [[services]]",
    ]


def test_bad_duration(problems: Callable[[str], list[str]]) -> None:
    assert problems(MINIMAL + '[services.shop.health]\ninterval = "5 sec"\n') == [
        "lbtui.toml: services.shop.health.interval: '5 sec' is not a duration; "
        "use a number of seconds or a string like '250ms', '2s', '1m'"
    ]


def test_retry_conditions_take_5xx_and_name_what_is_wrong(problems: Callable[[str], list[str]]) -> None:
    config = parse_config(with_service(retries={"attempts": 1, "on": ["reset", "5xx"]}))
    assert config.services[0].retries == RetriesConfig(attempts=1, on=("reset", "5xx"))
    assert problems(MINIMAL + '[services.shop.retries]\non = ["5XX", "500", "5xx", "5xx"]\n') == [
        "lbtui.toml: services.shop.retries.on[0]: '5XX' is not a retry condition; did you mean '5xx'?",
        "lbtui.toml: services.shop.retries.on[1]: '500' is not a retry condition; choose one of: "
        "'connect-failure', 'reset', 'gateway-error', '5xx', 'timeout'",
        "lbtui.toml: services.shop.retries.on[3]: '5xx' is listed twice",
    ]


def test_duration_must_be_positive_where_zero_makes_no_sense(problems: Callable[[str], list[str]]) -> None:
    assert problems(MINIMAL + '[services.shop.timeouts]\nconnect = "0s"\nresponse = -1\n') == [
        "lbtui.toml: services.shop.timeouts.connect: must be greater than zero; "
        "use a number of seconds or a string like '250ms', '2s', '1m'",
        "lbtui.toml: services.shop.timeouts.response: -1 is not a duration; durations cannot be negative",
    ]


def test_health_timeout_longer_than_interval(problems: Callable[[str], list[str]]) -> None:
    assert problems(MINIMAL + '[services.shop.health]\ninterval = "1s"\ntimeout = "1500ms"\n') == [
        "lbtui.toml: services.shop.health.timeout: timeout 1.5s is longer than interval 1s; "
        "make the timeout at most the interval"
    ]
    assert problems(MINIMAL + '[services.shop.health]\ntimeout = "3s"\n') == [
        "lbtui.toml: services.shop.health.timeout: timeout 3s is longer than interval 2s (the default); "
        "make the timeout at most the interval, or set interval"
    ]


def test_health_interval_alone_shortens_the_default_timeout() -> None:
    def health(**given: Any) -> tuple[float, float]:
        config = parse_config(with_service(health=given)).service("shop").health
        assert config is not None
        return config.interval, config.timeout

    assert health(interval="500ms") == (0.5, 0.5)
    assert health(interval="5s") == (5.0, 1.0)
    assert health(timeout="2s") == (2.0, 2.0)


def test_bad_size(problems: Callable[[str], list[str]]) -> None:
    assert problems(MINIMAL + '[limits]\nmax_body = "10 megs"\nmax_header_bytes = 0\n') == [
        "lbtui.toml: limits.max_header_bytes: must be greater than zero; "
        "use a number of bytes or a string like '512KiB', '100MiB', '1GB'",
        "lbtui.toml: limits.max_body: '10 megs' is not a size; "
        "use a number of bytes or a string like '512KiB', '100MiB', '1GB'",
    ]


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "'127.0.0.1' has no port; write it as 'host:port', e.g. '127.0.0.1:8080'"),
        ("127.0.0.1:70000", "port 70000 is out of range; use a port from 1 to 65535"),
        (
            "127.0.0.1:0",
            "port 0 is not allowed here; "
            "use a port from 1 to 65535 (port 0, any free port, is for listeners only)",
        ),
        ("127.0.0.1:http", "'http' is not a port number; use a port from 1 to 65535"),
        ("::1:80", "'::1:80' is not a valid address; put IPv6 addresses in brackets, e.g. '[::1]:80'"),
        ("[::1]80", "'[::1]80' has no port; write it as '[::1]:PORT'"),
        ("300.1.1.1:80", "'300.1.1.1' is not a valid IPv4 address"),
        ("bad host:80", "'bad host' is not a valid host name"),
        (
            ":80",
            "':80' has no host; write '127.0.0.1:80' (this machine) or '0.0.0.0:80' (all interfaces)",
        ),
    ],
)
def test_bad_backend_address(problems: Callable[[str], list[str]], address: str, expected: str) -> None:
    text = f'[[services.shop.backends]]\nname = "b"\naddress = "{address}"\n'
    assert problems(text) == [f"lbtui.toml: services.shop.backends[0].address: {expected}"]


def test_bad_listener_bind(problems: Callable[[str], list[str]]) -> None:
    text = '[[listeners]]\nbind = "0.0.0.0:65536"\n[[listeners]]\nbind = 8080\n' + MINIMAL
    assert problems(text) == [
        "lbtui.toml: listeners[0].bind: port 65536 is out of range; use a port from 0 to 65535",
        "lbtui.toml: listeners[1].bind: expected an address 'host:port', got integer 8080; "
        "write '127.0.0.1:8080'",
    ]


def test_missing_required_key(problems: Callable[[str], list[str]]) -> None:
    assert problems('[[services.shop.backends]]\nname = "b"\n') == [
        "lbtui.toml: services.shop.backends[0]: missing required key 'address'; "
        'e.g. address = "127.0.0.1:9001"'
    ]


def test_no_services(problems: Callable[[str], list[str]]) -> None:
    assert problems('[[listeners]]\nbind = "127.0.0.1:8080"\n') == [
        "lbtui.toml: missing required key 'services'; "
        "add a [services.NAME] table with [[services.NAME.backends]]"
    ]


def test_bad_enumeration_suggests_the_closest_choice(problems: Callable[[str], list[str]]) -> None:
    text = (
        '[services.shop]\nalgorithm = "roundrobin"\n'
        + MINIMAL.replace("[services.shop]\n", "")
        + 'state = "Drain"\n'
    )
    assert problems(text) == [
        "lbtui.toml: services.shop.algorithm: 'roundrobin' is not an algorithm; did you mean 'round_robin'?",
        "lbtui.toml: services.shop.backends[0].state: 'Drain' is not a backend state; did you mean 'drain'?",
    ]


def test_bad_enumeration_without_a_close_choice_lists_them_all(problems: Callable[[str], list[str]]) -> None:
    assert problems('[services.shop]\nalgorithm = "fastest"\n') == [
        "lbtui.toml: services.shop.algorithm: 'fastest' is not an algorithm; choose one of: 'round_robin', "
        "'weighted_round_robin', 'least_connections', 'random', 'p2c', 'ewma', 'ip_hash', 'consistent_hash'"
    ]


def test_duplicate_backend_names_across_services(problems: Callable[[str], list[str]]) -> None:
    text = MINIMAL + textwrap.dedent(
        """
        [[services.shop.backends]]
        name = "blue-1"
        address = "127.0.0.1:9002"

        [services.users]
        [[services.users.backends]]
        name = "blue-1"
        address = "127.0.0.1:9101"

        [[routes]]
        service = "shop"
        """
    )
    assert problems(text) == [
        "lbtui.toml: services.shop.backends[1].name: backend name 'blue-1' is already used at "
        "services.shop.backends[0]; backend names must be unique across all services",
        "lbtui.toml: services.users.backends[0].name: backend name 'blue-1' is already used at "
        "services.shop.backends[0]; backend names must be unique across all services",
    ]


def test_duplicate_listener_names_and_binds(problems: Callable[[str], list[str]]) -> None:
    text = (
        '[[listeners]]\nname = "web"\nbind = "127.0.0.1:8080"\n'
        '[[listeners]]\nname = "web"\nbind = "127.0.0.1:8080"\n'
        '[admin]\nbind = "127.0.0.1:8080"\n' + MINIMAL
    )
    assert problems(text) == [
        "lbtui.toml: listeners[1].name: listener name 'web' is already used at listeners[0]",
        "lbtui.toml: listeners[1].bind: 127.0.0.1:8080 is already bound by listeners[0]",
        "lbtui.toml: admin.bind: 127.0.0.1:8080 is already bound by listeners[0]",
        "lbtui.toml: admin.bind: 127.0.0.1:8080 is already bound by listeners[1]",
    ]


def test_route_to_a_missing_service(problems: Callable[[str], list[str]]) -> None:
    text = MINIMAL + textwrap.dedent(
        """
        [[routes]]
        match = { path_prefix = "/" }
        service = "shpo"

        [[routes]]
        aggregate = [{ service = "zzz", path = "/", group = "a" }]
        """
    )
    assert problems(text) == [
        "lbtui.toml: routes[0].service: no service named 'shpo'; did you mean 'shop'?",
        "lbtui.toml: routes[1].aggregate[0].service: no service named 'zzz'; defined services: 'shop'",
    ]


def test_route_needs_exactly_one_of_service_and_aggregate(problems: Callable[[str], list[str]]) -> None:
    text = MINIMAL + '[[routes]]\nmatch = {}\n[[routes]]\nservice = "shop"\naggregate = []\n'
    assert problems(text) == [
        "lbtui.toml: routes[0]: missing required key 'service'; "
        "or 'aggregate' to merge replies of several services",
        "lbtui.toml: routes[1].aggregate: needs at least one part; "
        "e.g. { service = ..., path = ..., group = ... }",
        "lbtui.toml: routes[1]: give either 'service' or 'aggregate', not both",
    ]


def test_tcp_listener_service(problems: Callable[[str], list[str]]) -> None:
    text = (
        '[[listeners]]\nbind = "127.0.0.1:5432"\nmode = "tcp"\n'
        '[[listeners]]\nbind = "127.0.0.1:5433"\nmode = "tcp"\nservice = "shp"\n'
        '[[listeners]]\nbind = "127.0.0.1:8080"\nservice = "shop"\n' + MINIMAL
    )
    assert problems(text) == [
        "lbtui.toml: listeners[0]: missing required key 'service'; a tcp listener forwards to one service",
        "lbtui.toml: listeners[2].service: only used by tcp listeners; "
        "remove it; http listeners pick a service through [[routes]]",
        "lbtui.toml: listeners[1].service: no service named 'shp'; did you mean 'shop'?",
    ]


def test_split_naming_a_missing_group(problems: Callable[[str], list[str]]) -> None:
    text = MINIMAL.replace('address = "127.0.0.1:9001"', 'address = "127.0.0.1:9001"\ngroup = "blue"')
    text += '[[services.shop.backends]]\nname = "green-1"\naddress = "127.0.0.1:9002"\ngroup = "green"\n'
    assert problems(text.replace("[services.shop]", "[services.shop]\nsplit = { blu = 90, green = 10 }")) == [
        "lbtui.toml: services.shop.split.blu: no backend of service 'shop' is in group 'blu'; "
        "did you mean 'blue'?"
    ]


def test_split_weights(problems: Callable[[str], list[str]]) -> None:
    assert problems(MINIMAL.replace("[services.shop]", "[services.shop]\nsplit = { default = 0 }")) == [
        "lbtui.toml: services.shop.split: every weight is 0; give at least one group a weight above 0"
    ]
    assert problems(MINIMAL.replace("[services.shop]", "[services.shop]\nsplit = { default = -1 }")) == [
        "lbtui.toml: services.shop.split.default: must be at least 0, got -1"
    ]


def test_backup_group_must_exist(problems: Callable[[str], list[str]]) -> None:
    assert problems(MINIMAL.replace("[services.shop]", '[services.shop]\nbackup_group = "dr"')) == [
        "lbtui.toml: services.shop.backup_group: no backend of service 'shop' is in group 'dr'; "
        "groups of service 'shop': 'default'"
    ]


def test_consistent_hash_without_hash_key(problems: Callable[[str], list[str]]) -> None:
    assert problems(MINIMAL.replace("[services.shop]", '[services.shop]\nalgorithm = "consistent_hash"')) == [
        "lbtui.toml: services.shop: missing required key 'hash_key' for algorithm 'consistent_hash'; "
        "set hash_key to one of: 'header:NAME', 'cookie:NAME', 'path', 'query:NAME'"
    ]


@pytest.mark.parametrize(
    ("hash_key", "expected"),
    [
        ("headr:X-User", "'headr:X-User' is not a hash key; did you mean 'header:X-User'?"),
        ("header:", "'header:' has no name after 'header:'; write e.g. 'header:X-User'"),
        ("ip", "'ip' is not a hash key; use one of: 'header:NAME', 'cookie:NAME', 'path', 'query:NAME'"),
    ],
)
def test_bad_hash_key(hash_key: str, expected: str) -> None:
    assert issues_of(with_service(algorithm="consistent_hash", hash_key=hash_key)) == [
        f"<config>: services.shop.hash_key: {expected}"
    ]


def test_admin_on_a_public_address_needs_a_token(problems: Callable[[str], list[str]]) -> None:
    assert problems('[admin]\nbind = "0.0.0.0:9901"\n' + MINIMAL) == [
        "lbtui.toml: admin.bind: the admin API on non-loopback address '0.0.0.0' needs a token; "
        'set token_env = "LBTUI_ADMIN_TOKEN" (a variable holding the token), or bind to 127.0.0.1'
    ]
    loaded = parse_config({**with_service(), "admin": {"bind": "0.0.0.0:9901", "token_env": "TOKEN"}})
    assert loaded.admin == AdminConfig(host="0.0.0.0", port=9901, token_env="TOKEN", enabled=True)
    assert parse_config({**with_service(), "admin": {"bind": "[::1]:9901"}}).admin.host == "::1"


def test_several_services_need_routes(problems: Callable[[str], list[str]]) -> None:
    text = MINIMAL + '[services.users]\n[[services.users.backends]]\nname = "u"\naddress = "127.0.0.1:9101"\n'
    assert problems(text) == [
        "lbtui.toml: http listeners need routes to choose among 2 services; "
        "add [[routes]] with a match and a service; only a config with one service needs none"
    ]


def test_sticky_is_checked(problems: Callable[[str], list[str]]) -> None:
    text = MINIMAL.replace(
        "[services.shop]\n",
        '[services.shop]\nsticky = { cookie = "a b", secret_env = "not-a-name", same_site = "loose", '
        "max_age = 0.5 }\n",
    )
    assert problems(text) == [
        "lbtui.toml: services.shop.sticky.cookie: 'a b' is not a valid cookie name; "
        "use letters, digits and -, no spaces or ':'",
        "lbtui.toml: services.shop.sticky.same_site: 'loose' is not a SameSite value; "
        "choose one of: 'lax', 'strict', 'none'",
        "lbtui.toml: services.shop.sticky.secret_env: 'not-a-name' is not an environment variable name; "
        "give the NAME of the variable that holds the secret (letters, digits, '_'), not the secret",
        "lbtui.toml: services.shop.sticky.max_age: must be at least 1s; "
        "leave it out for a cookie that lasts as long as the browser session",
    ]
    insecure = MINIMAL.replace(
        "[services.shop]\n",
        '[services.shop]\nsticky = { cookie = "__Host-srv", same_site = "none", secure = false }\n',
    )
    assert problems(insecure) == [
        "lbtui.toml: services.shop.sticky.same_site: SameSite=None needs the Secure attribute, and secure = "
        'false leaves it out; browsers drop such a cookie: remove secure = false, or choose "lax"',
        "lbtui.toml: services.shop.sticky.secure: a cookie named '__Host-srv' must be Secure (its prefix "
        "says so); remove secure = false, or choose a name without the __Secure- or __Host- prefix",
    ]


def test_sticky_needs_its_secret_and_an_http_route(monkeypatch: pytest.MonkeyPatch) -> None:
    from lbtui.features import ignored, refused

    keyed = {"cookie": "srv", "secret_env": "LBTUI_TEST_STICKY_SECRET"}
    data = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
        "services": {"shop": {"sticky": keyed, "backends": [{"name": "a", "address": "127.0.0.1:1"}]}},
    }
    monkeypatch.delenv("LBTUI_TEST_STICKY_SECRET", raising=False)
    assert [str(u) for u in refused(parse_config(data))] == [
        "services.shop.sticky.secret_env: the environment variable 'LBTUI_TEST_STICKY_SECRET' is not set "
        "(it holds the key of the sticky cookie's values)"
    ]
    monkeypatch.setenv("LBTUI_TEST_STICKY_SECRET", "k" * 32)
    assert refused(parse_config(data)) == []
    assert ignored(parse_config(data)) == []
    # Behind a tcp listener only, a cookie can do nothing: said, not refused.
    data["listeners"] = [{"name": "db", "bind": "127.0.0.1:0", "mode": "tcp", "service": "shop"}]
    assert [str(u) for u in ignored(parse_config(data))] == [
        "services.shop.sticky: has no effect: no http route sends requests to this service (a cookie is "
        "HTTP; tcp listeners and aggregate parts pick without it)"
    ]


def test_route_policies_are_checked(problems: Callable[[str], list[str]]) -> None:
    text = MINIMAL + textwrap.dedent(
        """
        [[routes]]
        match = { path = "api", path_regex = "(", methods = ["GTE"] }
        service = "shop"
        auth = { type = "api_key" }
        rate_limit = { rate = 0, key = "consumer" }
        cors = { allow_origins = ["https://app.example/"] }
        request_headers = { set = { "X Bad" = "v" } }
        """
    )
    assert problems(text) == [
        "lbtui.toml: routes[0].match: give only one of 'path', 'path_regex'",
        "lbtui.toml: routes[0].match.path: 'api' does not start with '/'; write '/api'",
        "lbtui.toml: routes[0].match.path_regex: '(' is not a valid regular expression: "
        "missing ), unterminated subpattern at position 0",
        "lbtui.toml: routes[0].match.methods[0]: 'GTE' is not an HTTP method; did you mean 'GET'?",
        "lbtui.toml: routes[0].auth: api_key auth needs consumers, and none are configured; "
        "add [[consumers]] with a name and api_key_sha256 or api_key_env",
        "lbtui.toml: routes[0].rate_limit.rate: must be at least 1, got 0",
        "lbtui.toml: routes[0].request_headers.set.\"X Bad\": 'X Bad' is not a valid header name; "
        "use letters, digits and -, no spaces or ':'",
        "lbtui.toml: routes[0].cors.allow_origins[0]: 'https://app.example/' is not an origin; "
        "remove the trailing '/': 'https://app.example'",
    ]


def test_jwt_auth_is_checked(problems: Callable[[str], list[str]]) -> None:
    text = MINIMAL + textwrap.dedent(
        """
        [[routes]]
        service = "shop"
        auth = { type = "jwt", algorithms = ["HS256", "RS256", "none"], header = "X-Token" }
        rate_limit = { rate = 1, key = "consumer" }
        """
    )
    assert problems(text) == [
        "lbtui.toml: routes[0].auth.algorithms[2]: 'none' is not allowed; "
        "unsigned tokens would let anyone in; use e.g. 'HS256' or 'RS256'",
        "lbtui.toml: routes[0].auth.header: only used by api_key auth; jwt reads 'Authorization: Bearer'",
        "lbtui.toml: routes[0].auth.algorithms: mixes HMAC (HS*) and public-key algorithms; "
        "a token could then be signed with the public key as an HMAC secret; use one kind per route",
        "lbtui.toml: routes[0].auth: missing required key 'secret_env'; HS256 needs a shared secret",
        "lbtui.toml: routes[0].auth: missing required key 'public_key_file'; RS256 needs a public key",
    ]


def test_consumers_are_checked(problems: Callable[[str], list[str]]) -> None:
    text = MINIMAL + textwrap.dedent(
        """
        [[consumers]]
        name = "alice"
        api_key_sha256 = "abc"

        [[consumers]]
        name = "alice"
        api_key_env = "ALICE KEY"

        [[consumers]]
        name = "carol"
        """
    )
    assert problems(text) == [
        "lbtui.toml: consumers[0].api_key_sha256: not a SHA-256 hex digest (64 hex digits); "
        "compute it with: printf %s 'THE-KEY' | sha256sum",
        "lbtui.toml: consumers[1].api_key_env: 'ALICE KEY' is not an environment variable name; "
        "give the NAME of the variable that holds the secret (letters, digits, '_'), not the secret",
        "lbtui.toml: consumers[1].name: consumer name 'alice' is already used at consumers[0]",
        "lbtui.toml: consumers[2]: missing required key 'api_key_sha256'; "
        'or api_key_env = "NAME" (a variable holding the key); keys are never stored in clear',
    ]


def test_multiple_issues_are_collected_at_once(problems: Callable[[str], list[str]]) -> None:
    text = textwrap.dedent(
        """
        [[listeners]]
        bind = "127.0.0.1"

        [services.shop]
        algorithm = "roundrobin"
        slow_start = "soon"

        [[services.shop.backends]]
        name = "blue-1"
        address = "127.0.0.1:9001"
        weight = 5000

        [limits]
        max_body = "lots"
        """
    )
    assert problems(text) == [
        "lbtui.toml: listeners[0].bind: '127.0.0.1' has no port; "
        "write it as 'host:port', e.g. '127.0.0.1:8080'",
        "lbtui.toml: services.shop.algorithm: 'roundrobin' is not an algorithm; did you mean 'round_robin'?",
        "lbtui.toml: services.shop.backends[0].weight: must be between 0 and 1000, got 5000",
        "lbtui.toml: services.shop.slow_start: 'soon' is not a duration; "
        "use a number of seconds or a string like '250ms', '2s', '1m'",
        "lbtui.toml: limits.max_body: 'lots' is not a size; "
        "use a number of bytes or a string like '512KiB', '100MiB', '1GB'",
    ]


def test_config_error_prints_one_issue_per_line_and_pickles() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"services": {"shop": {"algorithm": "x", "slow_start": "y"}}})
    error = caught.value

    assert str(error).splitlines() == [str(issue) for issue in error.issues]
    assert len(error.issues) == 2
    assert pickle.loads(pickle.dumps(error)).issues == error.issues


def test_toml_syntax_error_reports_line_and_column(problems: Callable[[str], list[str]]) -> None:
    assert problems("[services.shop]\nalgorithm = \n[[services.shop.backends]]\n") == [
        "lbtui.toml: invalid TOML: Invalid value (at line 2, column 13)"
    ]


def test_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ConfigError) as caught:
        load_config("nope.toml")

    assert [str(issue) for issue in caught.value.issues] == [
        f"nope.toml: file not found; looked for {tmp_path / 'nope.toml'}"
    ]


def test_unreadable_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / "latin1.toml").write_bytes(b'name = "caf\xe9"\n')
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())

    for name, expected in [
        ("dir.toml", "dir.toml: is a directory, not a file"),
        ("latin1.toml", "latin1.toml: not UTF-8 text (bad byte at offset 11); save the file as UTF-8"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_config(name)
        assert str(caught.value) == expected
    assert load_config("bom.toml").services[0].name == "shop"


def test_top_level_must_be_a_table() -> None:
    assert issues_of([1, 2]) == ["<config>: expected a table at the top level, got array"]  # type: ignore[arg-type]


# --- value parsers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1.5m", 90.0),
        ("1h", 3600.0),
        ("100us", 0.0001),
        ("100µs", 0.0001),
        ("1m30s", 90.0),
        ("2 s", 2.0),
        ("10MS", 0.01),
        ("0s", 0.0),
        (0, 0.0),
        (3, 3.0),
        (0.5, 0.5),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5 sec", "'5 sec' is not a duration; use a number of seconds or a string like '250ms', '2s', '1m'"),
        ("1d", "'1d' is not a duration; use a number of seconds or a string like '250ms', '2s', '1m'"),
        ("", "'' is not a duration; use a number of seconds or a string like '250ms', '2s', '1m'"),
        ("2", "'2' is not a duration; add a unit ('2s') or write 2 without quotes"),
        ("-2s", "'-2s' is not a duration; durations cannot be negative"),
        (-1, "-1 is not a duration; durations cannot be negative"),
        (float("inf"), "inf is not a duration; use a number of seconds or a string like '250ms', '2s', '1m'"),
        (
            True,
            "expected a duration, got boolean true; "
            "use a number of seconds or a string like '250ms', '2s', '1m'",
        ),
        ([1], "expected a duration, got array; use a number of seconds or a string like '250ms', '2s', '1m'"),
    ],
)
def test_bad_durations(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_duration(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("100MiB", 100 * 1024 * 1024),
        ("16KiB", 16384),
        ("1GB", 1_000_000_000),
        ("512", 512),
        ("1.5KiB", 1536),
        ("64 kb", 64_000),
        (512, 512),
        (0, 0),
    ],
)
def test_sizes(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "10 megs",
            "'10 megs' is not a size; use a number of bytes or a string like '512KiB', '100MiB', '1GB'",
        ),
        (
            "1.5B",
            "'1.5B' is not a whole number of bytes; use a number of bytes or a string like '512KiB', "
            "'100MiB', '1GB'",
        ),
        (-1, "-1 is not a size; sizes cannot be negative"),
        (
            1.5,
            "expected a size, got float 1.5; "
            "use a number of bytes or a string like '512KiB', '100MiB', '1GB'",
        ),
    ],
)
def test_bad_sizes(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_size(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:80", ("localhost", 80)),
        ("backend_1.internal:65535", ("backend_1.internal", 65535)),
    ],
)
def test_addresses(value: str, expected: tuple[str, int]) -> None:
    assert parse_address(value) == expected


def test_port_zero_only_for_listeners() -> None:
    assert parse_address("0.0.0.0:0", allow_zero=True) == ("0.0.0.0", 0)
    with pytest.raises(ValueError, match="port 0 is not allowed here"):
        parse_address("0.0.0.0:0")


# --- runtime backends ---------------------------------------------------------------------------------------


def test_parse_backend_at_runtime() -> None:
    shop = parse_config(with_service()).service("shop")

    added = parse_backend(
        {"name": "canary-1", "address": "127.0.0.1:9003", "group": "canary", "weight": 2}, shop
    )

    assert added == BackendConfig(name="canary-1", host="127.0.0.1", port=9003, group="canary", weight=2)
    assert parse_backend({"name": "x", "address": "[::1]:1"}) == BackendConfig(name="x", host="::1", port=1)


def test_parse_backend_reports_every_problem() -> None:
    shop = parse_config(with_service()).service("shop")

    with pytest.raises(ConfigError) as caught:
        parse_backend({"name": "-bad", "address": "nohost", "weight": -1, "group": "a b", "extra": 1}, shop)

    assert str(caught.value).splitlines() == [
        "<runtime>: backend.extra: unknown key; allowed keys: 'name', 'address', 'group', 'weight', 'state'",
        "<runtime>: backend.name: '-bad' is not a valid backend name; "
        "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
        "<runtime>: backend.address: 'nohost' has no port; write it as 'host:port', e.g. 'nohost:8080'",
        "<runtime>: backend.group: 'a b' is not a valid group name; "
        "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
        "<runtime>: backend.weight: must be between 0 and 1000, got -1",
    ]


def test_parse_backend_rejects_names_in_use() -> None:
    shop = parse_config(with_service()).service("shop")

    with pytest.raises(ConfigError) as in_service:
        parse_backend({"name": "blue-1", "address": "127.0.0.1:1"}, shop, source="admin API", key_path="body")
    with pytest.raises(ConfigError) as elsewhere:
        parse_backend({"name": "users-1", "address": "127.0.0.1:1"}, shop, taken_names={"users-1"})
    with pytest.raises(ConfigError) as not_a_table:
        parse_backend([])  # type: ignore[arg-type]

    assert (
        str(in_service.value)
        == "admin API: body.name: backend name 'blue-1' is already used in service 'shop'"
    )
    assert str(elsewhere.value) == (
        "<runtime>: backend.name: backend name 'users-1' is already used; "
        "backend names must be unique across all services"
    )
    assert str(not_a_table.value) == "<runtime>: backend: expected a table, got array"


# --- robustness ---------------------------------------------------------------------------------------------

_VOCABULARY = sorted(
    {
        *(
            key
            for section in (
                Config,
                ListenerConfig,
                ServiceConfig,
                BackendConfig,
                HealthConfig,
                RouteConfig,
                RouteMatch,
                AuthConfig,
                RateLimitConfig,
                ConsumerConfig,
            )
            for key in config_module.keys_of(section)
        ),
        "shop",
        "blue",
        "X-Tenant",
    }
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=70_000),
    st.floats(),
    st.text(max_size=6),
    st.sampled_from(["2s", "127.0.0.1:80", "[::1]:0", "shop", "blue", "tcp", "jwt", "HS256", "/", "header:"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_VOCABULARY), inner, max_size=4)
    ),
    max_leaves=25,
)


def _leaf_paths(node: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(node, dict):
        children = list(node.items())
    elif isinstance(node, list):
        children = list(enumerate(node))
    else:
        return [prefix]
    return [prefix] * bool(prefix) + [
        path for key, value in children for path in _leaf_paths(value, (*prefix, key))
    ]


_EXAMPLE = tomllib.loads(FULL_EXAMPLE)
_EXAMPLE_PATHS = _leaf_paths(_EXAMPLE)


def assert_only_config_errors(data: Any) -> None:
    try:
        parse_config(data)
    except ConfigError as error:
        issues = error.issues
    else:
        return
    assert issues
    for issue in issues:
        assert "internal error" not in issue.message
        assert not issue.message.startswith("invalid value")


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(_VOCABULARY), _VALUES, max_size=5))
def test_any_input_gives_a_config_or_issues_never_a_traceback(data: dict[str, Any]) -> None:
    assert_only_config_errors(data)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_EXAMPLE_PATHS), _VALUES), min_size=1, max_size=3))
def test_damaged_example_gives_issues_never_a_traceback(
    edits: list[tuple[tuple[str | int, ...], Any]],
) -> None:
    data = copy.deepcopy(_EXAMPLE)
    for path, value in edits:
        node: Any = data
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced a table on this path
    assert_only_config_errors(data)


def test_importing_config_pulls_in_no_ui() -> None:
    code = "import sys, lbtui.config; sys.exit(bool({'textual', 'rich'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_config_is_below_the_core_and_the_proxy(tmp_path: Path) -> None:
    # Loading a config, TLS files checked and all, imports nothing of lbtui.core or lbtui.proxy: the algorithm
    # names are the config's, and the TLS checks are the leaf lbtui.tlsfiles'.
    issued = trustme.CA().issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "lbtui.toml").write_text(
        '[[listeners]]\nbind = "127.0.0.1:0"\ntls = { cert = "cert.pem", key = "key.pem" }\n' + MINIMAL
    )
    code = (
        "import sys\n"
        "from lbtui.config import load_config\n"
        f"config = load_config({str(tmp_path / 'lbtui.toml')!r})\n"
        "assert config.listeners[0].tls is not None\n"
        "print(sorted(m for m in sys.modules if m.startswith(('lbtui.core', 'lbtui.proxy'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_each_key_is_declared_once_and_documented() -> None:
    # Every key a table accepts comes from its dataclass's declarations (lbtui/config/model.py), and
    # docs/config.md names each one.
    docs = (Path(__file__).parent.parent / "docs" / "config.md").read_text(encoding="utf-8")
    sections = [
        Config,
        ListenerConfig,
        TLSConfig,
        AdminConfig,
        ServiceConfig,
        BackendConfig,
        HealthConfig,
        TimeoutsConfig,
        RetriesConfig,
        OutlierConfig,
        StickyConfig,
        config_module.RampConfig,
        RouteConfig,
        RouteMatch,
        HeaderOps,
        AuthConfig,
        RateLimitConfig,
        CorsConfig,
        CacheConfig,
        AggregatePart,
        ConsumerConfig,
        LimitsConfig,
        StateConfig,
        config_module.AccessLogConfig,
    ]
    for section in sections:
        keys = config_module.keys_of(section)
        assert keys, section
        assert len(set(keys)) == len(keys)
        # `key`, or a table's `[key]`, `[[key]]`, `[key.NAME]`
        undocumented = [key for key in keys if not re.search(r"`\[{0,2}" + re.escape(key) + r"[`\].]", docs)]
        assert not undocumented, (section.__name__, undocumented)


def test_the_example_configs_in_docs_are_valid() -> None:
    from lbtui.config import load_config
    from lbtui.features import refused

    examples = sorted((Path(__file__).parent.parent / "docs" / "examples").glob("*.toml"))
    assert examples
    for path in examples:
        config = load_config(path)
        assert refused(config) == [], path


# --- a listener's request rules and a route's upgrades (issue 13) ---------------------------------------------


def test_listener_request_rules_and_their_defaults() -> None:
    loaded = parse_config(
        {
            **with_service(),
            "listeners": [
                {"bind": "127.0.0.1:0"},
                {
                    "bind": "127.0.0.1:0",
                    "upgrades": ["WebSocket", "h2c"],
                    "escaped_slashes": "unescape_and_redirect",
                    "headers_with_underscores": "reject",
                    "forwarded": True,
                },
            ],
            "routes": [
                {"service": "shop", "upgrades": []},
                {"service": "shop", "match": {"path": "/ws"}, "upgrades": ["websocket"]},
                {"service": "shop", "match": {"path": "/x"}},
            ],
        }
    )
    default, given = loaded.listeners
    assert (
        default.upgrades,
        default.escaped_slashes,
        default.headers_with_underscores,
        default.forwarded,
    ) == (
        ("websocket",),
        "reject",
        "drop",
        False,
    )
    assert (given.upgrades, given.escaped_slashes, given.headers_with_underscores, given.forwarded) == (
        ("websocket", "h2c"),
        "unescape_and_redirect",
        "reject",
        True,
    )
    assert [route.upgrades for route in loaded.routes] == [(), ("websocket",), None]


def test_listener_request_rules_are_checked() -> None:
    issues = issues_of(
        {
            **with_service(),
            "listeners": [
                {
                    "bind": "127.0.0.1:0",
                    "upgrades": ["web socket", "h2c", "h2c", 7],
                    "escaped_slashes": "unescape",
                    "headers_with_underscores": "allow",
                    "forwarded": "yes",
                },
                {"bind": "127.0.0.1:0", "mode": "tcp", "service": "shop", "upgrades": [], "forwarded": True},
            ],
            "routes": [
                {"service": "shop", "upgrades": "websocket"},
                {"aggregate": [{"service": "shop", "path": "/a", "group": "a"}], "upgrades": []},
            ],
        }
    )
    assert [issue.removeprefix("<config>: ") for issue in issues] == [
        "listeners[0].upgrades[0]: 'web socket' is not a protocol name; e.g. 'websocket' (a token: no spaces, "
        "'/' or ',')",
        "listeners[0].upgrades[2]: 'h2c' is listed twice",
        "listeners[0].upgrades[3]: expected a string, got integer 7",
        "listeners[0].escaped_slashes: 'unescape' is not an escaped_slashes action; choose one of: 'reject', "
        "'keep', 'unescape_and_forward', 'unescape_and_redirect'",
        "listeners[0].headers_with_underscores: 'allow' is not a headers_with_underscores action; choose one of: "
        "'drop', 'keep', 'reject'",
        "listeners[0].forwarded: expected a boolean, got string 'yes'",
        "listeners[1].upgrades: only used by http listeners; a tcp listener passes bytes through and reads no HTTP",
        "listeners[1].forwarded: only used by http listeners; a tcp listener passes bytes through and reads no HTTP",
        "routes[0].upgrades: expected an array, got string 'websocket'",
        "routes[1].upgrades: only used with 'service'; an aggregate answers every request itself",
    ]


def test_a_header_with_an_underscore_that_no_listener_keeps_cannot_be_named() -> None:
    routes = [
        {"service": "shop", "match": {"headers": {"X_Tenant": "a"}}},
        {
            "service": "shop",
            "match": {"path": "/k"},
            "auth": {"type": "api_key", "header": "X_Api_Key"},
            "rate_limit": {"rate": 1, "key": "header:X_Client"},
        },
    ]
    data = {
        "services": {
            "shop": {
                "algorithm": "consistent_hash",
                "hash_key": "header:X_User",
                "backends": [{"name": "blue-1", "address": "127.0.0.1:9001"}],
            }
        },
        "consumers": [{"name": "c", "api_key_env": "K"}],
        "routes": routes,
    }
    issues = [issue.removeprefix("<config>: ") for issue in issues_of(data)]
    hint = "or set headers_with_underscores = 'keep' on the listener"
    assert issues == [
        f"routes[0].match.headers.X_Tenant: header 'X_Tenant' has '_', and the listeners drop such headers "
        f"(headers_with_underscores = 'drop'); use 'X-Tenant', {hint}",
        f"routes[1].auth.header: header 'X_Api_Key' has '_', and the listeners drop such headers "
        f"(headers_with_underscores = 'drop'); use 'X-Api-Key', {hint}",
        f"routes[1].rate_limit.key: header 'X_Client' has '_', and the listeners drop such headers "
        f"(headers_with_underscores = 'drop'); use 'X-Client', {hint}",
        f"services.shop.hash_key: header 'X_User' has '_', and the listeners drop such headers "
        f"(headers_with_underscores = 'drop'); use 'X-User', {hint}",
    ]
    kept = parse_config({**data, "listeners": [{"bind": "127.0.0.1:0", "headers_with_underscores": "keep"}]})
    assert kept.routes[0].match.headers == (("X_Tenant", "a"),)
