"""What the guard's hooks are made of: the redis-py connect methods to wrap, the wrappers, and the state of
SQLAlchemy's dialect events to give back on uninstall."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any


def with_subclasses(cls: type[Any]) -> Iterable[type[Any]]:
    seen: set[type[Any]] = set()
    stack = [cls]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        yield current
        stack.extend(current.__subclasses__())


def connect_method(cls: type[Any]) -> str | None:
    """The method of ``cls`` (in its own namespace) every connect path of this redis-py version goes through.

    redis-py >= 5.3 funnels ``connect()``, pool checkout and first send through ``connect_check_health``;
    older versions do it all in ``connect``. A class that inherits the method is covered by its base.
    """
    if "connect_check_health" in cls.__dict__:
        return "connect_check_health"
    if "connect" in cls.__dict__ and not hasattr(cls, "connect_check_health"):
        return "connect"
    return None


def wrap_sync(original: Callable[..., Any], check: Callable[[Any], None]) -> Callable[..., Any]:
    @functools.wraps(original)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_sock", None) is None:  # an open connection was checked when it opened
            check(self)
        return original(self, *args, **kwargs)

    return guarded


def wrap_async(original: Callable[..., Any], check: Callable[[Any], None]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "is_connected", False):
            check(self)
        return await original(self, *args, **kwargs)

    return guarded


def dialect_class_listeners(dialect_cls: type[Any]) -> bool:
    """Whether any class-level dialect event listener is left (then ``_has_events`` must stay True)."""
    try:
        from sqlalchemy.engine.events import DialectEvents

        dispatch = dialect_cls.dispatch
        for name in dir(DialectEvents):
            attr = getattr(dispatch, name, None) if not name.startswith("_") else None
            clslevel = getattr(attr, "_clslevel", None)
            if clslevel is not None and any(len(listeners) for listeners in clslevel.values()):
                return True
    except Exception:
        return True  # unknown internals: leaving the flag set only costs an empty loop per connect
    return False
