"""Steering HAProxy: lbtui's client of HAProxy's Runtime API (the `stats socket`), in `runtime`.

This package sits beside the faces (`tui | admin | haproxy` in the layers): it may import the core, the config and
the leaves, never a face, the runtime or the data plane, and it never imports textual, rich or httpx (headless).
"""
