"""project.py: the project's objects imported by configuration, its settings loaded and refusing one line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict

from pytest_dashtam.errors import ConfigError
from pytest_dashtam.project import env_files_with, import_object, load_settings


def test_import_object_errors_name_the_option() -> None:
    assert import_object("os.path:join", "app") is os.path.join
    with pytest.raises(ConfigError, match=r"dashtam_app='no_such_module_x:app': cannot import 'no_such_module_x'"):
        import_object("no_such_module_x:app", "app")
    with pytest.raises(ConfigError, match=r"dashtam_settings='os:Nope': 'os' has no attribute 'Nope'"):
        import_object("os:Nope", "settings")


class StrictSettings:
    def __init__(self, **kwargs: Any) -> None:
        if "STRICT_URL" not in os.environ:
            raise ValueError("STRICT_URL missing: postgresql://u:secret@h/db\nsecond line")
        self.url = os.environ["STRICT_URL"]


def test_settings_read_the_environment_and_refusals_are_one_line_and_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRICT_URL", "x")
    assert load_settings(f"{__name__}:StrictSettings", tmp_path / ".env.test").url == "x"
    monkeypatch.delenv("STRICT_URL")
    with pytest.raises(ConfigError) as info:
        load_settings(f"{__name__}:StrictSettings", tmp_path / ".env.test")
    assert "\n" not in str(info.value)
    assert "secret" not in str(info.value)
    assert "refused the test env file" in str(info.value)


class OwnEnvFileSettings(BaseSettings):
    """A project's settings with an env file of its own holding a required field the test env file lacks."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    api_key: str
    environment: str = "development"


def test_the_test_env_file_is_added_to_the_settings_own_not_swapped_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("API_KEY", raising=False)
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    (tmp_path / ".env").write_text("API_KEY=from-the-project\nENVIRONMENT=development\n")
    (tmp_path / ".env.test").write_text("ENVIRONMENT=testing\n")
    settings = load_settings(f"{__name__}:OwnEnvFileSettings", tmp_path / ".env.test")
    assert settings.api_key == "from-the-project"  # the project's own field is still read
    assert settings.environment == "testing"  # the test env file wins where both set a value
    assert isinstance(settings, OwnEnvFileSettings)


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        (None, (".env.test",)),
        (".env", (".env", ".env.test")),
        (Path(".env"), (".env", ".env.test")),
        ((".env", ".env.local"), (".env", ".env.local", ".env.test")),
        ([".env.test"], (".env.test",)),  # the same file once
    ],
)
def test_env_files_with(
    own: object, expected: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert env_files_with(own, Path(".env.test")) == expected
