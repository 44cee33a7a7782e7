"""Settings of the bot edge (Slack app, console), read once from the environment."""
from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class BotSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PORTLLM_", extra="ignore")

    data_dir: Path = Field(default_factory=lambda: Path.home() / ".portllm")
    broker_url: str | None = None
    # Secrets are SecretStr so a logged settings object never shows them.
    # Slack's own variable names, not prefixed: they are what every Slack guide tells an admin to set.
    slack_bot_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("SLACK_BOT_TOKEN"))
    slack_signing_secret: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SLACK_SIGNING_SECRET")
    )
    slack_api_url: str | None = Field(default=None, validation_alias=AliasChoices("SLACK_API_URL"))
    slack_app_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("SLACK_APP_TOKEN"))

    def resolved_broker_url(self) -> str:
        """The Celery broker: the embedded SQLite queue in the data dir unless one is configured."""
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'queue.db'}"

    def console_outbox(self) -> Path:
        return self.data_dir / "console" / "outbox.jsonl"


class SettingsError(Exception):
    """A required setting is missing; the message names the variable to set."""


def require(value: SecretStr | None, variable: str, why: str) -> str:
    if value is None or not value.get_secret_value():
        raise SettingsError(f"{variable} is not set: {why}.")
    return value.get_secret_value()
