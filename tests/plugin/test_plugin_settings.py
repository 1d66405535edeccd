"""The project's settings class keeps its own env file: the test env file is added to it, not swapped in.

An ordinary project (shapes: lower-case pydantic-settings fields, `env_file=".env"`, settings built at import
time) whose `.env` sets a required field the test env file does not (an API key) and dev values the test
env file overrides. `dashtam_settings` (the plugin's instance of the class) and the app's own import-time
instance both have the key, the test values, and the run's database; the shared server's foreign data is
unchanged.
"""

from __future__ import annotations

from foreign import Foreign
from inner_project import Inner

CONFIG = '''
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    environment: str = "development"
    testing: bool = False
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/shapes"
    redis_url: str = "redis://127.0.0.1:6379/0"
    api_key: str  # set by the project's .env alone
    feature_flag: str = "off"


settings = Settings()
'''

TESTS = '''
from shapes.config import settings as imported


def test_the_plugins_settings_keep_the_projects_own_fields(dashtam_settings, dashtam_stack):
    assert dashtam_settings.api_key == "from-the-project"
    assert dashtam_settings.feature_flag == "on"
    assert dashtam_settings.environment == "testing"
    assert dashtam_settings.testing is True
    assert dashtam_settings.database_url.rsplit("/", 1)[1].endswith("_test")  # the run's, not the .env's dev one


def test_the_apps_own_settings_see_the_same(dashtam_settings):
    assert imported.api_key == "from-the-project"
    assert imported.environment == "testing"
    assert imported.database_url.rsplit("/", 1)[1] == dashtam_settings.database_url.rsplit("/", 1)[1]
'''


def test_the_projects_own_env_file_still_sets_its_fields(inner: Inner, planted: Foreign) -> None:
    root = inner.copy("shapes")
    (root / "shapes" / "config.py").write_text(CONFIG)
    (root / ".env").write_text(
        "API_KEY=from-the-project\nFEATURE_FLAG=on\nENVIRONMENT=development\nTESTING=false\n"
        "DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/shapes\n"
    )
    (root / "tests" / "test_own_settings.py").write_text(TESTS)
    before = planted.checksum()
    result = inner.run("tests/test_own_settings.py", "-v")
    result.assert_outcomes(passed=2)
    assert planted.checksum() == before
