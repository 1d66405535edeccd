"""Ctrl-C in the middle of a test that holds a database session (run by test_plugin_fixtures.py)."""

from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy.ext.asyncio import AsyncSession


@pytest.mark.asyncio
async def test_interrupted(db_session: AsyncSession) -> None:
    os.kill(os.getpid(), signal.SIGINT)
