from __future__ import annotations

import conftest


def test_env_file_was_exported_before_conftests_imported_the_app() -> None:
    assert conftest.ENVIRONMENT_AT_IMPORT == "testing"
    assert conftest.TESTING_AT_IMPORT == "true"
