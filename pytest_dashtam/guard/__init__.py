"""Refuse, before any socket opens, a connection to a PostgreSQL database or Redis index outside this run's stack.

A test that reaches a developer's database (a hard-coded URL, a settings object read before the plugin exported
its URLs, an Alembic env.py with its own idea of the target) can destroy data, and one that reaches another
run's database makes both flaky. Like pytest-django's "Database access not allowed" blocker, the guard turns
that into an immediate, one-line error that names the target, what the run uses instead and the fix.

The seams are where every connection of the supported stack is born, so the check runs once per new
connection, never per query:

* SQLAlchemy's ``do_connect`` dialect event, listened for on the ``Engine`` class: it fires for every engine,
  sync or async, created before or after ``install()``, just before the DBAPI's ``connect()``.
* redis-py's ``AbstractConnection.connect_check_health`` (sync and asyncio): ``connect()``, the pool's
  checkout, ``send_packed_command`` on a fresh connection and Sentinel's ``connect_to`` all go through it, and
  it is defined once on the abstract class, so TCP, SSL and Unix socket subclasses are covered. The check sits
  in front of it, outside redis-py's ``try`` blocks, so a refusal is never turned into a retried
  ``ConnectionError``.

A connection made with asyncpg or psycopg directly, or an engine built with its own ``creator``, does not pass
these seams and is not checked.

One job per module; import the names from here, not from them: `_guard` (`ConnectionGuard` and its hooks),
`_endpoints` (hosts and ports normalised for comparison), `_params` (what a driver is about to connect to),
`_hooks` (the redis-py wrappers and SQLAlchemy event bookkeeping the hooks are made of).
"""

from __future__ import annotations

from pytest_dashtam.guard._endpoints import Target
from pytest_dashtam.guard._guard import DEFAULT_FIX, INTERNAL_PREFIX, ConnectionGuard, GuardError, active_guard

__all__ = ["DEFAULT_FIX", "INTERNAL_PREFIX", "ConnectionGuard", "GuardError", "Target", "active_guard"]
