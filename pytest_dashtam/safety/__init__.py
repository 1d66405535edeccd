"""The safety gate: checks that stand between the test run and anything destructive.

Every check but one is a pure function over settings and parsed URLs, so it can refuse before any
connection that could change something is opened. The last one, `check_owned_or_absent`, runs on a live
admin connection just before a DROP: the plugin only drops a database that carries the stamp it wrote
when it created it, whatever the database is called.

Hosts are judged as the drivers will resolve them, not as the URL looks: a hostless URL goes wherever
PGHOST says, so `postgresql://postgres@/postgres` with PGHOST=10.1.2.3 is a remote server. An allowed
remote host is looked up (bounded) before anything connects, so a typo fails in a second, not after the
connect timeout.

Each check returns a `Violation` (what was wrong, what was checked, what to do, on one line) or None;
`raise_for` turns any number of them into one `SafetyError`. There is deliberately no switch that skips
the gate: a run that cannot pass it must be fixed, not waved through.

One job per module; import the names from here, not from them:
`_violation` (`Violation`, `raise_for`), `_names` (ENVIRONMENT, TESTING, database names, Redis indexes),
`_targets` (which hosts a URL really reaches: host lists, PGHOST, service files), `_hosts` (those hosts
local or allowed, and resolvable), `_settings` (the env file's text and the loaded settings object),
`_ownership` (the live stamp checked before a DROP), `_redact` (passwords masked in messages).
"""

from __future__ import annotations

from pytest_dashtam.safety._env_urls import check_env_url
from pytest_dashtam.safety._hosts import check_host, check_resolvable, check_servers
from pytest_dashtam.safety._names import (
    check_database_name,
    check_environment,
    check_redis_index,
    check_test_name,
    check_testing_flag,
    database_name_from_url,
    is_test_database_name,
    redis_index_from_url,
)
from pytest_dashtam.safety._ownership import (
    OWNERSHIP_COMMENT_PREFIX,
    check_owned_or_absent,
    database_comment,
    is_owned_comment,
    ownership_comment,
)
from pytest_dashtam.safety._settings import (
    check_all,
    check_config,
    check_env_file,
    check_settings,
    plain_value,
    settings_value,
)
from pytest_dashtam.safety._targets import (
    DEFAULT_POSTGRES_SOCKETS,
    REDIS_SCHEMES,
    is_postgres_scheme,
    postgres_hosts,
    redis_hosts,
)
from pytest_dashtam.safety._violation import CheckName, Violation, raise_for

__all__ = [
    "DEFAULT_POSTGRES_SOCKETS",
    "OWNERSHIP_COMMENT_PREFIX",
    "REDIS_SCHEMES",
    "CheckName",
    "Violation",
    "check_all",
    "check_config",
    "check_database_name",
    "check_env_file",
    "check_env_url",
    "check_environment",
    "check_host",
    "check_owned_or_absent",
    "check_redis_index",
    "check_resolvable",
    "check_servers",
    "check_settings",
    "check_test_name",
    "check_testing_flag",
    "database_comment",
    "database_name_from_url",
    "is_owned_comment",
    "is_postgres_scheme",
    "is_test_database_name",
    "ownership_comment",
    "plain_value",
    "postgres_hosts",
    "raise_for",
    "redis_hosts",
    "redis_index_from_url",
    "settings_value",
]
