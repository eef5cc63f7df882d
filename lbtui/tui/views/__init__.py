"""The dashboard's views, one module each (backends, routes, events, log), as widgets that own what they show.

Each view is a container of the dashboard's ContentSwitcher: it composes its widgets (their ids are the CSS's,
lbtui/tui/lbtui.tcss) and refreshes them from a snapshot or the controller when the app asks, keeping what it
needs between refreshes (the trends, the newest event or request shown). The text comes from
lbtui/tui/format.py; a view decides only what to show where.
"""

REFRESH_SECONDS = 0.5  # how often the dashboard refreshes the view shown (and the events)
