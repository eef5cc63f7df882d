"""The benchmarks: `python benchmarks/run.py` (lbtui against HAProxy and a direct backend, with wrk) and its
parts, importable as `benchmarks.*` by the tests (tests/benchmarks/).

Stdlib only (the dashboard scripts aside: they import lbtui). run.py is the command line and the runner; below it:
targets.py (what is measured and how it is asked), procs.py (processes, ptys, readiness, pinning), cpu.py (/proc
CPU accounting and how disturbed a run was), configs.py (the nginx, HAProxy and lbtui configs), wrk.py (running
wrk and reading its output), report.py (the run records, medians, ratios, bars, the table and the JSON).
"""
