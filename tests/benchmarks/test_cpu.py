"""CPU accounting from /proc (benchmarks/cpu.py): the parsers on text recorded from this Linux box's /proc, the
tree arithmetic on small tables, and the live readings on processes started here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.cpu import (
    CLK_TCK,
    cpu_busy_seconds,
    descendants,
    others_pct,
    parse_cpu_times,
    parse_pid_stat,
    proc_table,
    tree_cpu_seconds,
    tree_pids,
    tree_ticks,
)
from benchmarks.errors import StartError

# /proc/PID/stat of a Python process that had used 735 + 51 ticks itself, its waited-for children 179 + 52.
PYTHON_STAT = (
    b"4090 (python) S 4089 4085 23534 0 -1 4194304 84770 80501 8 20 735 51 179 52 20 0 5 0 1409250 625213440 "
    b"58642 18446744073709551615 93853184372736 93853184373077 140726034505568 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 "
    b"0 0 93853184384432 93853184385048 93854165610496 140726034512538 140726034512587 140726034512587 "
    b"140726034513892 0\n"
)
# /proc/PID/stat of `sleep` run as "./s) 1 2 (x": spaces and parentheses in the command name.
ODD_NAME_STAT = (
    b"4369 (s) 1 2 (x) S 4368 4362 23608 0 -1 4194304 132 0 0 0 0 0 0 0 20 0 1 0 1410456 2990080 413 "
    b"18446744073709551615 94766574342144 94766574360073 140726969060448 0 0 0 0 6 0 1 0 0 17 1 0 0 0 0 0 "
    b"94766574374160 94766574375424 94766681223168 140726969068257 140726969068272 140726969068272 "
    b"140726969069548 0\n"
)
# The first lines of /proc/stat on a 2-CPU VM (user nice system idle iowait irq softirq steal guest guest_nice).
PROC_STAT = """\
cpu  1747305 0 205366 792380 6816 0 44119 23158 0 0
cpu0 825904 0 108071 437060 2068 0 23727 12104 0 0
cpu1 921400 0 97294 355320 4747 0 20391 11054 0 0
intr 14766961 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 2 0 0 0 0 2815 365 0 242 1 570724 0 29145
ctxt 52342361
"""


def test_a_process_stat_gives_its_parent_and_its_own_cpu_ticks():
    # utime + stime only: the children's (cutime, cstime) are counted where they ran, while alive.
    assert parse_pid_stat(PYTHON_STAT) == (4089, 735 + 51)


def test_a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields():
    assert parse_pid_stat(ODD_NAME_STAT) == (4368, 0)


@pytest.mark.parametrize("raw", [b"", b"garbage", PYTHON_STAT[:40]])
def test_what_is_not_a_process_stat_is_none(raw):
    assert parse_pid_stat(raw) is None


def test_a_cpu_line_gives_busy_and_steal_seconds():
    busy, steal = parse_cpu_times(PROC_STAT, 1, clk_tck=100)
    assert busy == pytest.approx((921400 + 0 + 97294 + 0 + 20391) / 100)  # user nice system irq softirq
    assert steal == pytest.approx(11054 / 100)
    assert parse_cpu_times(PROC_STAT, 0, clk_tck=100)[0] == pytest.approx((825904 + 108071 + 23727) / 100)


def test_a_cpu_without_a_line_reads_zero():
    assert parse_cpu_times(PROC_STAT, 7) == (0.0, 0.0)


TABLE = {1: (0, 5), 10: (1, 7), 11: (10, 3), 12: (1, 100), 13: (11, 2), 20: (99, 1)}


def test_a_tree_is_the_root_and_everything_below_it():
    assert sorted(descendants(TABLE, 10)) == [10, 11, 13]
    assert descendants(TABLE, 10)[0] == 10
    assert sorted(descendants(TABLE, 1)) == [1, 10, 11, 12, 13]
    assert tree_ticks(TABLE, 10) == 7 + 3 + 2
    assert tree_ticks(TABLE, 1) == 5 + 7 + 3 + 100 + 2  # pid 20 is someone else's


def test_others_is_the_cpus_busy_time_less_the_targets_own():
    assert others_pct(busy_s=3.0, own_s=2.0, wall_s=4.0) == pytest.approx(25.0)
    assert others_pct(busy_s=3.0, own_s=0.0, wall_s=3.0) == pytest.approx(100.0)
    assert others_pct(busy_s=2.0, own_s=2.1, wall_s=4.0) == 0.0  # readings a moment apart: never below 0


def test_this_process_is_in_the_live_table_under_its_parent():
    assert proc_table()[os.getpid()][0] == os.getppid()


def test_a_trees_cpu_time_counts_a_busy_grandchild():
    # The child starts a grandchild that burns 0.3 s of CPU, then says so, and both stay alive.
    grandchild = (
        "import time, sys\n"
        "while time.process_time() < 0.3: pass\n"
        "print('burnt', flush=True); time.sleep(60)\n"
    )
    child = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', {grandchild!r}], stdout=subprocess.PIPE, text=True)\n"
        "print(p.pid, p.stdout.readline().strip(), flush=True); p.wait()\n"
    )
    with subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            pid, word = proc.stdout.readline().split()
            assert word == "burnt"
            assert int(pid) in tree_pids(proc.pid)
            own = proc_table()[proc.pid][1] / CLK_TCK
            assert tree_cpu_seconds(proc.pid) - own >= 0.29  # ticks: 1/CLK_TCK s granularity
        finally:
            for p in tree_pids(proc.pid)[::-1]:
                os.kill(p, 9)
    with pytest.raises(StartError, match=f"process {proc.pid} is gone"):
        tree_cpu_seconds(proc.pid)


def test_a_cpus_busy_time_since_boot_grows():
    cpu = min(os.sched_getaffinity(0))
    busy0, steal0 = cpu_busy_seconds(cpu)
    assert busy0 > 0
    assert steal0 >= 0
    busy1, _ = cpu_busy_seconds(cpu)
    assert busy1 >= busy0
