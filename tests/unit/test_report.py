"""report.py: the terminal's lines about the prepared stack."""

from __future__ import annotations

from pytest_dashtam.report import describe_report


def test_report_lines() -> None:
    assert describe_report({}) == []
    assert describe_report({"error": "boom"}) == ["dashtam: not started: boom"]
    lines = describe_report(
        {
            "backend": "local",
            "backend_reason": "from --dashtam-backend",
            "postgres": "PostgreSQL 15 at postgresql://postgres@127.0.0.1:1/postgres",
            "redis": "Redis 7 at redis://127.0.0.1:2",
            "database": "shop_test",
            "template": "shop_test_tpl_abc",
            "cache_hit": True,
            "redis_index": 1,
            "tuning": {"fsync": "off"},
        }
    )
    assert lines[1] == (
        "dashtam: database shop_test from template shop_test_tpl_abc (cache hit), redis index 1, tuning fsync=off"
    )
