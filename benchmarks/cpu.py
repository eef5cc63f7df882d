"""CPU accounting from /proc: the CPU time of a process tree, and how busy one CPU was (to tell a disturbed run).

A process tree's CPU time is utime + stime of the root and every live descendant, all threads included (a
thread's time is in its process's /proc/PID/stat), in seconds; a descendant that exited between two readings
is no longer counted (the targets do not fork per request). A CPU's busy time is user + nice + system + irq +
softirq from /proc/stat; steal (the hypervisor's) is kept apart. Linux only.
"""

from __future__ import annotations

import os

from benchmarks.errors import StartError

CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_pid_stat(raw: bytes) -> tuple[int, int] | None:
    """(ppid, utime + stime in clock ticks) from the text of a /proc/PID/stat; None if it is not one.

    The command name (field 2) is in parentheses and may hold spaces and parentheses itself: the fields after
    it start after the last `)`.
    """
    rest = raw[raw.rfind(b")") + 2 :].split()
    # rest[0] is field 3 (state); ppid is field 4, utime field 14, stime field 15 (proc(5)).
    try:
        return int(rest[1]), int(rest[11]) + int(rest[12])
    except (IndexError, ValueError):
        return None


def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime in clock ticks) for every process we can read."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        parsed = parse_pid_stat(raw)
        if parsed is not None:
            table[int(entry)] = parsed
    return table


def descendants(table: dict[int, tuple[int, int]], root: int) -> list[int]:
    """`root` and every process below it in `table` (pid -> (ppid, ticks)), root first."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def tree_pids(root: int) -> list[int]:
    """`root` and its live descendants."""
    return descendants(proc_table(), root)


def tree_ticks(table: dict[int, tuple[int, int]], root: int) -> int:
    """utime + stime of `root` and its descendants in `table`, in clock ticks (`root` must be in it)."""
    return sum(table[pid][1] for pid in descendants(table, root))


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of `root` and all its live descendants (all threads included), in seconds."""
    table = proc_table()
    if root not in table:
        raise StartError(f"process {root} is gone")
    return tree_ticks(table, root) / CLK_TCK


def parse_cpu_times(stat: str, cpu: int, clk_tck: int = CLK_TCK) -> tuple[float, float]:
    """(busy, steal) seconds of one CPU from the text of /proc/stat (busy: user nice system irq softirq);
    (0, 0) if the CPU has no line."""
    for line in stat.splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:9]]
            return (v[0] + v[1] + v[2] + v[5] + v[6]) / clk_tck, v[7] / clk_tck
    return 0.0, 0.0


def cpu_busy_seconds(cpu: int) -> tuple[float, float]:
    """(busy, steal) seconds of one CPU since boot, from /proc/stat (busy: user nice system irq softirq)."""
    with open("/proc/stat") as f:
        return parse_cpu_times(f.read(), cpu)


def others_pct(busy_s: float, own_s: float, wall_s: float) -> float:
    """The share of one CPU, in %, that went to anything but the target over `wall_s` seconds: the CPU's busy
    time less the target's own CPU time there (0 if the target did not run there alone); never below 0 (the
    readings are not simultaneous)."""
    return max(0.0, busy_s - own_s) * 100 / wall_s
