"""The page-token key is made once, whoever asks first, and every process reads the same one."""

from __future__ import annotations

import asyncio

from flightlog_server.storage.database import Database, DatabaseSettings
from flightlog_server.storage.migrate import upgrade
from flightlog_server.storage.page_token_keys import SECRET_BYTES, page_token_keys
from tests.conftest import CreateDatabase

PROCESSES = 8


def test_servers_starting_together_all_get_the_one_key_that_was_made(
    create_database: CreateDatabase,
) -> None:
    url = create_database("flightlog_token_keys")
    upgrade(url)

    async def scenario() -> list[dict[int, bytes]]:
        # One pool per "process", all asking at once on an empty table.
        databases = [Database(DatabaseSettings(url=url, pool_size=1)) for _ in range(PROCESSES)]
        try:
            return await asyncio.gather(*(db.run(page_token_keys) for db in databases))
        finally:
            for db in databases:
                await db.close()

    seen = asyncio.run(scenario())
    assert len(seen[0]) == 1
    (secret,) = seen[0].values()
    assert len(secret) == SECRET_BYTES
    assert all(keys == seen[0] for keys in seen)
    # Asked again later: the same key, and still only one.
    assert asyncio.run(scenario())[0] == seen[0]
