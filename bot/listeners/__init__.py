"""Bolt listeners, grouped by kind; `register` wires them all onto an app."""
from __future__ import annotations

from slack_bolt import App

from bot.listeners import actions, commands, events, home, middleware, reactions
from bot.listeners.deps import Deps


def register(app: App, deps: Deps) -> None:
    middleware.register(app, deps)
    commands.register(app, deps)
    actions.register(app, deps)
    events.register(app, deps)
    home.register(app, deps)
    reactions.register(app, deps)
