"""The command palette (ctrl+p): every action of the dashboard's keys, by name, for the selected backend."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from lbtui.tui.app import Dashboard


class DashboardCommands(Provider):
    """Offers what the keys do, with the same help text; read-only mode offers only what does not steer."""

    def _commands(self) -> list[tuple[str, str, str]]:
        app: Dashboard = self.app  # type: ignore[assignment]
        out = []
        for binding in app.BINDINGS:
            key, action, description = binding.key, binding.action, binding.description  # type: ignore[union-attr]
            name = action.split("(", 1)[0]
            if app.read_only and name in app.STEERING:
                continue
            if name == "quit":
                continue  # the palette has its own quit
            out.append((f"{description} ({binding.key_display or key})", action, binding.tooltip))  # type: ignore[union-attr]
        return out

    async def discover(self) -> Hits:
        for title, action, help_text in self._commands():
            yield DiscoveryHit(title, partial(self.app.run_action, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, action, help_text in self._commands():
            score = max(matcher.match(title), matcher.match(help_text))
            if score > 0:
                yield Hit(
                    score, matcher.highlight(title), partial(self.app.run_action, action), help=help_text
                )
