"""Someone's dev data on the servers the test databases live on, checksummed around every reliability case.

The reliability suite's promise is about data the run does not own: a dev database with rows, a foreign
database whose name looks like a test database's, keys in the dev Redis index (0) and keys in another
index. All of it sits on the same servers as the runs under test, and its checksum must not change.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from foreign import Foreign

DEV_INDEX = 0


class DevData(Foreign):
    """Foreign data plus keys in the dev Redis index; `checksum()` covers both."""

    def plant_all(self) -> None:
        tag = secrets.token_hex(3)
        self.plant_database(f"devdata_{tag}", rows=5)  # no "test" in the name: someone's dev database
        self.plant_database(f"devdata_{tag}_test", rows=5)  # test-looking, but nobody's run stamped it
        self.plant_redis(self.free_index(2))
        dev = self.redis(DEV_INDEX)
        for i in range(20):
            dev.set(f"devkey:{self.tag}:{i}", f"dev value {i}")

    def checksum(self) -> dict[str, Any]:
        result = super().checksum()
        dev = self.redis(DEV_INDEX)
        result["dev-index"] = sorted((k, dev.get(k)) for k in dev.keys(f"devkey:{self.tag}:*"))
        assert len(result["dev-index"]) == 20
        return result

    def cleanup(self) -> None:
        super().cleanup()
        dev = self.redis(DEV_INDEX)
        keys = dev.keys(f"devkey:{self.tag}:*")
        if keys:
            dev.delete(*keys)


@contextmanager
def dev_data(postgres_url: str, redis_url: str) -> Iterator[DevData]:
    data = DevData(postgres_url, redis_url)
    try:
        data.plant_all()
        yield data
    finally:
        data.cleanup()
