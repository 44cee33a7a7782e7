"""Registry settings, read once at the edge (env prefix PORTLLM_) and passed down."""
from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PORTLLM_", extra="ignore")

    data_dir: Path = Path("~/.portllm")
    # PORTLLM_DATABASE_URL; None means the SQLite file in the data dir.
    database_url: str | None = None

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'portllm.db'}"
