"""The audit file of a HAProxy target (lbtui/haproxy/audit.py): shared by several writers (each an AuditLog, as
each lbtui process has one), ids unique and rising, bounded, and never in the way of a change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lbtui.core.control import Event
from lbtui.haproxy.audit import AuditLog, Entry, audit_path


def entry(log: AuditLog, target: str) -> Entry:
    _, written = log.append(
        lambda id: Entry(Event(id, 1.0, "ctl", "state", target, "ready", "drain"), log.pid)
    )
    return written


def test_writers_share_ids_and_see_each_others_lines_once(tmp_path):
    path = tmp_path / "audit" / "x.jsonl"
    one, two = AuditLog(path), AuditLog(path)
    assert entry(one, "a").event.id == 1
    others, written = two.append(
        lambda id: Entry(Event(id, 2.0, "key", "weight", "b", 1, 5), two.pid, {"undoable": True})
    )
    assert ([e.event.target for e in others], written.event.id) == (["a"], 2)
    assert [(e.event.id, e.event.target, e.undoable) for e in one.read_new()] == [(2, "b", True)]
    assert one.read_new() == []  # read once
    assert entry(one, "c").event.id == 3
    fresh = AuditLog(path)
    assert [e.event.id for e in fresh.read_new()] == [1, 2, 3]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_it_is_bounded_and_a_trim_adds_nothing_twice(tmp_path):
    path = tmp_path / "x.jsonl"
    writer, reader = AuditLog(path, keep=5), AuditLog(path, keep=5)
    seen: list[int] = []
    for n in range(23):
        entry(writer, f"s{n}")
        if n % 4 == 0:
            seen += [e.event.id for e in reader.read_new()]
    seen += [e.event.id for e in reader.read_new()]
    assert seen == list(range(1, 24))  # every line once, across the trims
    lines = path.read_text().splitlines()
    assert 5 <= len(lines) <= 10
    assert [e.event.id for e in AuditLog(path).read_new()][-1] == 23


def test_a_torn_or_foreign_line_is_skipped(tmp_path):
    path = tmp_path / "x.jsonl"
    log = AuditLog(path)
    entry(log, "a")
    with open(path, "a") as stream:
        stream.write('{"id": 2, "not": "an event"}\nnot json\n')
    entry(log, "b")
    assert [e.event.target for e in AuditLog(path).read_new()] == ["a", "b"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_folder_that_cannot_be_written_never_stops_a_change(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    log = AuditLog(locked / "sub" / "x.jsonl")
    assert entry(log, "a").event.id == 1
    assert "cannot keep the audit file" in log.problem


def test_a_file_that_cannot_be_written_never_stops_a_change(tmp_path):
    path = tmp_path / "x.jsonl"
    path.mkdir()  # a folder where the file should be: every write fails, as on a read-only or full disk
    log = AuditLog(path)
    assert [entry(log, t).event.id for t in ("a", "b")] == [1, 2]
    assert "cannot write the audit file" in log.problem


def test_the_file_is_named_from_the_target(tmp_path):
    assert (
        audit_path("haproxy:///run/haproxy/admin.sock", tmp_path) == tmp_path / "run_haproxy_admin.sock.jsonl"
    )
    assert audit_path("haproxy://127.0.0.1:9999", tmp_path) == tmp_path / "127.0.0.1_9999.jsonl"
    assert audit_path("haproxy://[::1]:9999", tmp_path) == tmp_path / "1_9999.jsonl"


def test_the_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LBTUI_HAPROXY_AUDIT_DIR", str(tmp_path / "mine"))
    assert audit_path("haproxy://127.0.0.1:1") == tmp_path / "mine" / "127.0.0.1_1.jsonl"
    monkeypatch.delenv("LBTUI_HAPROXY_AUDIT_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert (
        audit_path("haproxy://127.0.0.1:1") == tmp_path / "state" / "lbtui" / "haproxy" / "127.0.0.1_1.jsonl"
    )
    assert isinstance(audit_path("haproxy://127.0.0.1:1"), Path)
