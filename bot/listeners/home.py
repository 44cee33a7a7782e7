"""The App Home tab: of what is live and what awaits approval, only the viewer's part.

App Home is private to the viewer but not to a channel, so it shows only the runs they
requested or may decide: nothing from channels they may not be in.
"""
from __future__ import annotations

from slack_bolt import App
from slack_sdk import WebClient

from portllm_core import blocks, views
from bot.listeners.deps import Deps


def register(app: App, deps: Deps) -> None:
    @app.event("app_home_opened")
    def home_opened(event: dict, client: WebClient) -> None:
        if event.get("tab", "home") != "home":
            return
        with deps.session_factory() as s:
            view = views.status_view(s, viewer=event["user"])
        client.views_publish(user_id=event["user"], view=blocks.home_view(view))
