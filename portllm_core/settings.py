"""The one settings object of every PortLLM process, read once at the edge and passed down.

Variables are prefixed `PORTLLM_`, except Slack's own (`SLACK_BOT_TOKEN`, …), which keep the names
every Slack guide tells an admin to set. `.env.example` and the README's configuration table
are checked against this class by tests/core/test_settings.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SQLITE_QUEUE_PREFIX = "sqla+sqlite"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PORTLLM_", extra="ignore", populate_by_name=True)

    # -- where state lives ---------------------------------------------------------------
    # Expanded once, here: every process derives the database, queue and artifact paths from it.
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".portllm")
    database_url: str | None = None  # None: the SQLite file in the data dir
    broker_url: str | None = None  # None: the SQLite queue in the data dir

    # -- workers -------------------------------------------------------------------------
    notifier: Literal["console", "slack"] = "console"
    device: str | None = None  # None: CUDA when present, else CPU
    base_cache_size: int = Field(default=2, ge=1)  # bases resident per worker process
    # CPU threads per worker process; None: torch's default (every core). Small models on shared
    # cores run far faster on one: the demo's re-tune took 6.8 s on 1 thread, 57 s on 2, on a busy
    # two-core machine.
    torch_threads: int | None = Field(default=None, ge=1)
    # Redis redelivers an unacked task after this long; it must outlast the longest job (a
    # re-tune on a large base), or a healthy run would be started a second time.
    visibility_timeout_s: int = 12 * 3600
    # A gpu job still running after this is stopped; keep it below the visibility timeout.
    job_time_limit_s: int = 6 * 3600
    answer_time_limit_s: int = 300
    # The sweeper: how often, how long a run may sit queued, how old a heartbeat may get, tries.
    sweep_interval_s: float = 30.0
    queued_limit_s: float = 300.0
    heartbeat_limit_s: float = 120.0
    heartbeat_interval_s: float = 10.0
    max_attempts: int = Field(default=3, ge=1)
    # A short re-tune, warm-started from the patch (on the demo world 8 epochs take v3 from 57 % to
    # 94 % in ~15 s on one CPU thread; the patch itself was trained for 30).
    retune_epochs: int = Field(default=8, ge=1)
    # The evaluation ledger: runs reuse every score already computed for the same model, patch,
    # suite and scoring settings. Off: every run computes its own (benchmarks compare the two).
    ledger: bool = True
    # Prometheus metrics of a worker (and of the bot in Socket Mode) on this port, all interfaces;
    # None: not served. The bot over HTTP serves /metrics on its own port.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    # -- answers ---------------------------------------------------------------------------
    # local: the worker's resident base with the patch attached, one answer at a time per process.
    # vllm: the serve worker supervises one vLLM OpenAI server per live base (in its own
    # environment, `make vllm`), every live patch on it as a LoRA adapter, answers batched.
    serve_backend: Literal["local", "vllm"] = "local"
    # The interpreter of vLLM's environment; relative paths start at the worker's directory.
    vllm_python: str = ".venv-vllm/bin/python"
    # Extra arguments for each server, e.g. `--tensor-parallel-size 2` or, on CPU, where it is the
    # share of RAM vLLM reserves, `--gpu-memory-utilization 0.15` (its default 0.92 fails there).
    vllm_args: str = ""
    vllm_max_servers: int = Field(default=2, ge=1)  # servers at once; the least recently used idle one makes room
    vllm_idle_s: float = Field(default=3600.0, gt=0)  # a server unused this long is stopped
    # A server up and its first adapter loaded within this, or the answer fails saying so.
    vllm_start_timeout_s: float = Field(default=600.0, gt=0)
    # Answers in flight at once in a serve worker with vllm (threads: the engine does the batching).
    vllm_concurrency: int = Field(default=16, ge=1)
    # Bases served by a vLLM server someone else runs (started with --enable-lora and
    # VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, the artifacts' volume mounted at the same path):
    # JSON from the base's "family/version" to its URL, e.g. {"llama/v2": "http://gpu-box:8000"}.
    vllm_urls: dict[str, str] = Field(default_factory=dict)

    # -- Slack ---------------------------------------------------------------------------
    # SecretStr, so a logged settings object never shows them.
    slack_bot_token: SecretStr | None = Field(default=None, validation_alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr | None = Field(default=None, validation_alias="SLACK_SIGNING_SECRET")
    slack_app_token: SecretStr | None = Field(default=None, validation_alias="SLACK_APP_TOKEN")
    slack_api_url: str | None = Field(default=None, validation_alias="SLACK_API_URL")
    slack_update_interval_s: float = 1.0  # Slack allows about one chat.update per second
    # Slack's own payloads are a few kB; anything larger is refused (413) before it is read.
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    # How long an event, command or click id is remembered, so a redelivery is not answered twice.
    dedupe_ttl_s: int = Field(default=3600, ge=60)

    # -- who may use the GPUs how often (runs requested in the last hour) -----------------
    runs_per_user_per_hour: int = Field(default=10, ge=1)
    runs_per_assistant_per_hour: int = Field(default=30, ge=1)

    # -- releases ------------------------------------------------------------------------
    # The operations channel that gets each release's summary (updated as verdicts land);
    # None: the summary is only in `portllm base add`'s output and `portllm release show`.
    release_channel: str | None = None
    # `portllm base watch`: seconds between looks at the model store.
    watch_interval_s: float = Field(default=60.0, gt=0)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("database_url", "broker_url", "slack_api_url", "release_channel")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None  # `VAR=` in an .env file means "use the default"

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'portllm.db'}"

    def resolved_broker_url(self) -> str:
        return self.broker_url or f"{SQLITE_QUEUE_PREFIX}:///{self.data_dir / 'queue.db'}"

    def redis_url(self) -> str | None:
        """The broker's Redis, when the broker is Redis: shared state (dedupe) lives there too."""
        return self.broker_url if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")) else None

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def outbox_path(self) -> Path:
        """The console channel's outbox: workers append, `portllm console` tails it."""
        return self.data_dir / "console" / "outbox.jsonl"

    @property
    def metrics_dir(self) -> Path:
        """Where forking processes (gunicorn, Celery's pool) keep their Prometheus values, one folder each."""
        return self.data_dir / "metrics"

    @property
    def scratch_dir(self) -> Path:
        """Work folders of long jobs, on the data volume rather than a small /tmp."""
        return self.data_dir / "tmp"


class SettingsError(Exception):
    """A required setting is missing; the message names the variable to set."""


# The values .env.example ships with: a copied file left unedited must not start a server that
# accepts requests signed with a secret everyone can read (tests/core checks the two agree).
PLACEHOLDER_SECRETS = frozenset({"xoxb-your-bot-token", "your-signing-secret"})


def require(value: SecretStr | None, variable: str, why: str) -> str:
    """The secret's value; refused when it is empty or still the placeholder from .env.example."""
    secret = "" if value is None else value.get_secret_value().strip()
    if not secret:
        raise SettingsError(f"{variable} is not set: {why}.")
    if secret in PLACEHOLDER_SECRETS:
        raise SettingsError(f"{variable} is still the placeholder from .env.example: set it to {why}.")
    return secret
