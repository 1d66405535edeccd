"""A FastAPI app with a database and nothing else."""

from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from notes.db import get_session
from notes.models import Note

app = FastAPI()


@app.post("/notes/{title}", status_code=201)
async def add(title: str, session: Annotated[AsyncSession, Depends(get_session)]) -> dict[str, object]:
    note = Note(title=title)
    session.add(note)
    await session.commit()
    return {"id": note.id}


@app.get("/notes")
async def titles(session: Annotated[AsyncSession, Depends(get_session)]) -> list[str]:
    return list((await session.scalars(select(Note.title).order_by(Note.id))).all())
