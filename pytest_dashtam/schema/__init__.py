"""The test schema: a template database built once per schema hash, cloned for every test database.

Building the schema with `alembic upgrade head` costs hundreds of milliseconds to seconds; cloning a built
database with `CREATE DATABASE ... TEMPLATE` costs a few. So the template `<test_db>_tpl_<hash>` is kept on
the server across runs while the hash of its inputs (the Alembic scripts, or the metadata's DDL without
Alembic) matches, the way pgtestdb does it in Go, and each run clones fresh test databases from it.

The package, one job per module:

* `names`: the template's and test databases' names and URLs, the stamp roles, identifier quoting;
* `hashing`: the template hash, from the Alembic scripts or the metadata's DDL;
* `chain`: the Alembic chain a template was migrated through, recorded in its stamp, so that a chain that
  only grew is built from a clone of the old template (its new revisions alone);
* `ddl`: connections, advisory locks and the statements that create and drop databases, behind the checks;
* `migration`: `alembic upgrade head` into one database, in a child process that can reach nothing else;
* `templates`: the template's lifecycle (build, reuse, drop the stale ones) and the test databases' (clone,
  drop, read back the tuning);
* `kept`: the databases `--dashtam-keep-failed` keeps (made from the template, stamped kept, listed, dropped).

Other modules import from the package: the names in `__all__` are its interface.
"""

from __future__ import annotations

from pytest_dashtam.schema.ddl import reclaim_unfinished, unfinished_name
from pytest_dashtam.schema.hashing import template_hash
from pytest_dashtam.schema.kept import (
    KeptDatabase,
    create_kept_database,
    drop_kept_database,
    list_kept_databases,
    parse_kept_stamp,
)
from pytest_dashtam.schema.migration import migrate
from pytest_dashtam.schema.names import (
    ROLE_BUILDING,
    ROLE_KEPT,
    ROLE_TEMPLATE,
    ROLE_TEST,
    database_url,
    redis_url_with_index,
    template_name,
)
from pytest_dashtam.schema.templates import (
    SEED_TEMPLATES,
    TemplateResult,
    create_test_database,
    drop_templates,
    drop_test_database,
    ensure_template,
    prune_for_seed,
    read_tuning,
)

__all__ = [
    "ROLE_BUILDING",
    "ROLE_KEPT",
    "ROLE_TEMPLATE",
    "ROLE_TEST",
    "SEED_TEMPLATES",
    "KeptDatabase",
    "TemplateResult",
    "create_kept_database",
    "create_test_database",
    "database_url",
    "drop_kept_database",
    "drop_templates",
    "drop_test_database",
    "ensure_template",
    "list_kept_databases",
    "migrate",
    "parse_kept_stamp",
    "prune_for_seed",
    "read_tuning",
    "reclaim_unfinished",
    "redis_url_with_index",
    "template_hash",
    "template_name",
    "unfinished_name",
]
