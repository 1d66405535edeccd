from __future__ import annotations

import pytest


@pytest.mark.dashtam_db(transaction="yes")
def test_bad_marker_argument(db_engine: object) -> None:
    pass
