"""What another connection to the test database sees: none of a test's writes, which stay in its transaction."""

from shapes.models import Note
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine


async def rows_seen_from_outside(db_engine: AsyncEngine) -> int:
    async with db_engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(Note))).scalar_one()
