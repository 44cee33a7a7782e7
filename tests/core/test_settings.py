"""One settings object: every process derives the same paths from it, and the README's table and
`.env.example` list every setting with the default the code uses."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from portllm_core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def variables() -> dict[str, object]:
    """Environment variable -> default, for every setting."""
    found = {}
    for name, field in Settings.model_fields.items():
        variable = field.validation_alias if isinstance(field.validation_alias, str) else f"PORTLLM_{name}".upper()
        found[variable] = field.get_default(call_default_factory=True)
    return found


def same(default: object, written: str) -> bool:
    if default is None:
        return True  # "—", "unset" or prose saying what happens instead
    if isinstance(default, Path):
        return written == str(default).replace(str(Path.home()), "~", 1)
    if isinstance(default, bool):
        return written == str(default).lower()
    if isinstance(default, (int, float)):
        return float(written) == float(default)
    return written == str(default)


def readme_defaults() -> dict[str, str | None]:
    """`variable` -> its documented default, from the README's configuration table."""
    section = (ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    found: dict[str, str | None] = {}
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z0-9_]+)`", cells[0])
        defaults = re.findall(r"`([^`]*)`", cells[1])
        for i, name in enumerate(names):
            found[name] = defaults[i] if len(defaults) == len(names) else None
    return found


def env_example_defaults() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(m.groups() for line in lines if (m := re.match(r"^#?\s*((?:PORTLLM|SLACK)_[A-Z0-9_]+)=(.*)$", line)))


def test_the_data_dir_is_expanded_once_so_every_process_shares_one_queue(monkeypatch):
    monkeypatch.setenv("PORTLLM_DATA_DIR", "~/pl")
    settings = Settings()
    assert settings.data_dir == Path.home() / "pl"
    assert settings.resolved_broker_url() == f"sqla+sqlite:///{Path.home() / 'pl' / 'queue.db'}"
    assert settings.resolved_database_url() == f"sqlite:///{Path.home() / 'pl' / 'portllm.db'}"


def test_an_empty_url_in_an_env_file_means_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv("PORTLLM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PORTLLM_BROKER_URL", "")
    assert Settings().resolved_broker_url() == f"sqla+sqlite:///{tmp_path / 'queue.db'}"


@pytest.mark.parametrize("variable", sorted(variables()))
def test_the_readme_table_documents_each_setting_with_its_default(variable):
    documented = readme_defaults()
    assert variable in documented, f"add {variable} to the README's configuration table"
    if documented[variable] is not None:
        assert same(variables()[variable], documented[variable]), (
            f"README says {variable} defaults to {documented[variable]!r}, the code says {variables()[variable]!r}")


@pytest.mark.parametrize("variable", sorted(variables()))
def test_env_example_lists_each_setting_with_its_default(variable):
    listed = env_example_defaults()
    assert variable in listed, f"add {variable} to .env.example"
    default = variables()[variable]
    if listed[variable] and not variable.startswith("SLACK_"):  # Slack's values are placeholders to replace
        assert same(default, listed[variable]), f".env.example: {variable}={listed[variable]}, code default {default!r}"


def test_a_wrong_default_in_the_readme_is_caught():
    assert not same(8, "2") and same(8, "8") and same(30.0, "30") and same(Path.home() / ".portllm", "~/.portllm")


def test_every_secret_placeholder_in_env_example_is_refused():
    from portllm_core.settings import PLACEHOLDER_SECRETS

    shipped = {value for variable, value in env_example_defaults().items() if variable.startswith("SLACK_") and value}
    assert shipped and shipped <= PLACEHOLDER_SECRETS
