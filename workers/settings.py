"""Worker settings: read once at the worker's edge (env prefix PORTLLM_) and passed down."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Redis redelivers an unacked task after this long; it must outlast the longest job
# (a retune on a large base), or a healthy run would be started a second time.
DEFAULT_VISIBILITY_TIMEOUT_S = 12 * 3600


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PORTLLM_", extra="ignore")

    data_dir: Path = Field(default_factory=lambda: Path.home() / ".portllm")
    broker_url: str | None = None
    notifier: Literal["console", "slack"] = "console"
    device: str | None = None  # None: CUDA when present, else CPU
    base_cache_size: int = Field(default=2, ge=1)  # bases resident per serve process
    visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S
    # A gpu job still running after this is killed (its run is retried, then failed, by the
    # sweeper); keep it below the visibility timeout.
    job_time_limit_s: int = 6 * 3600
    answer_time_limit_s: int = 300

    # Sweeper: how long a run may sit queued, how old a heartbeat may get, how many tries.
    sweep_interval_s: float = 30.0
    queued_limit_s: float = 300.0
    heartbeat_limit_s: float = 120.0
    heartbeat_interval_s: float = 10.0
    max_attempts: int = Field(default=3, ge=1)

    # A short re-tune, warm-started from the patch (on the demo world 8 epochs take v3 from 57 % to
    # 94 % in ~15 s on one CPU thread; the patch itself was trained for 30).
    retune_epochs: int = Field(default=8, ge=1)

    # Slack credentials use Slack's own variable names (shared with the bot).
    # SecretStr so a logged settings object never shows the token.
    slack_bot_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("SLACK_BOT_TOKEN"))
    slack_api_url: str | None = Field(default=None, validation_alias=AliasChoices("SLACK_API_URL"))
    slack_update_interval_s: float = 1.0  # Slack allows about one chat.update per second

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'queue.db'}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "console" / "outbox.jsonl"
