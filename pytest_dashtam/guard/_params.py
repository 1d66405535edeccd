"""Reading the connection parameters a driver is about to use: asyncpg's and psycopg's keywords, and libpq
conninfo strings or URIs, parsed without libpq and without the network."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_KV = re.compile(r"\s*(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']+)")


def _parse_conninfo(dsn: str) -> dict[str, str]:
    """The keywords of a libpq conninfo string or postgres:// URI, without libpq and without the network.

    A multi-host URI ('postgresql://a:5432,b:5433/db') keeps every host, as libpq would try them all.
    """
    dsn = dsn.strip()
    out: dict[str, str] = {}
    if not re.match(r"^postgres(ql)?://", dsn):
        for key, raw in _KV.findall(dsn):
            value = raw[1:-1].replace("\\'", "'").replace("\\\\", "\\") if raw.startswith("'") else raw
            out[key] = value
        return out
    from urllib.parse import parse_qsl, unquote

    rest = dsn.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        out["user"] = unquote(userinfo.split(":", 1)[0])
    hosts: list[str] = []
    ports: list[str] = []
    for entry in netloc.split(","):
        if entry.startswith("["):
            h, _, tail = entry[1:].partition("]")
            p = tail[1:] if tail.startswith(":") else ""
        else:
            h, _, p = entry.partition(":")
        hosts.append(unquote(h))
        ports.append(p)
    if any(hosts):
        out["host"] = ",".join(hosts)
    if any(ports):
        out["port"] = ",".join(ports)
    if path:
        out["dbname"] = unquote(path)
    for key, value in parse_qsl(query):
        out["dbname" if key == "database" else key] = value
    return out


def _joined(value: object) -> str | None:
    """A host or port setting as libpq's comma-separated text (asyncpg takes lists)."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return ",".join("" if v is None else str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class PgParams:
    host: str | None
    port: str | None
    database: str | None
    user: str | None
    application_name: str | None


def pg_params(cargs: Sequence[Any], cparams: Mapping[str, Any]) -> PgParams:
    """What asyncpg (host/port/database) or psycopg (host/port/dbname, maybe a conninfo) will connect to."""
    merged: dict[str, Any] = {}
    for dsn in (cargs[0] if cargs else None, cparams.get("dsn"), cparams.get("conninfo")):
        if isinstance(dsn, str) and dsn:
            merged.update(_parse_conninfo(dsn))
    # Explicit keywords win over a conninfo, as in asyncpg and libpq; psycopg says dbname, asyncpg database.
    merged.update({("dbname" if k == "database" else k): v for k, v in cparams.items() if v is not None})
    host = merged.get("hostaddr") or merged.get("host")  # libpq dials hostaddr when it is given
    database = merged.get("dbname")
    app = merged.get("application_name")
    settings = merged.get("server_settings")
    if isinstance(settings, Mapping) and settings.get("application_name"):
        app = settings["application_name"]
    return PgParams(
        host=_joined(host) or None,
        port=_joined(merged.get("port")) or None,
        database=str(database) if database else None,
        user=str(merged["user"]) if merged.get("user") else None,
        application_name=str(app) if app else None,
    )
