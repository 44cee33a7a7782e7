from __future__ import annotations

import pytest

from bot.server import gunicorn_options, serve_socket
from portllm_core.settings import Settings, SettingsError
from bot.slack_app import build_app


def settings(fake_slack, **overrides) -> Settings:
    values = dict(slack_bot_token="xoxb-secret-token", slack_signing_secret="signing-secret-value",
                  slack_api_url=fake_slack.url)
    values.update(overrides)
    return Settings(**values)


def test_the_web_api_client_uses_slack_api_url(fake_slack, world):
    app = build_app(settings(fake_slack), world.session_factory, world.queue)
    assert app.client.base_url == fake_slack.url
    assert [c.method for c in fake_slack.calls] == ["auth.test"]  # the token was checked there


def test_http_mode_requires_the_signing_secret_socket_mode_does_not(fake_slack, world):
    with pytest.raises(SettingsError, match="SLACK_SIGNING_SECRET is not set"):
        build_app(settings(fake_slack, slack_signing_secret=None), world.session_factory, world.queue)
    app = build_app(settings(fake_slack, slack_signing_secret=None), world.session_factory, world.queue,
                    socket_mode=True)
    assert app.client.base_url == fake_slack.url
    with pytest.raises(SettingsError, match="SLACK_APP_TOKEN is not set"):
        serve_socket(settings(fake_slack))
    with pytest.raises(SettingsError, match="SLACK_BOT_TOKEN is not set"):
        build_app(settings(fake_slack, slack_bot_token=None), world.session_factory, world.queue)


def test_secrets_stay_out_of_reprs(fake_slack):
    text = repr(settings(fake_slack, slack_app_token="xapp-secret"))
    for secret in ("xoxb-secret-token", "signing-secret-value", "xapp-secret"):
        assert secret not in text


def test_gunicorn_is_set_up_for_bursts():
    options = gunicorn_options(3000, "0.0.0.0", 2, 32)
    assert options["worker_class"] == "gthread" and options["backlog"] >= 50 * 8 and options["threads"] >= 8
