"""Fixtures of the RPC tests' WatchSessions modules (their helpers are in ``watching.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flightlog_server.app import ServerSettings
from flightlog_server.storage.changes import ChangeNotifier, change_notifier
from flightlog_server.storage.database import DatabaseSettings
from flightlog_server.storage.migrate import upgrade
from tests.reliability.private_postgres import PrivatePostgres
from tests.rpc.factories import unique
from tests.rpc.watching import Org, Watcher
from tests.support import ServerThread, Stubs, create_identity


@pytest.fixture
def org(database_url: str, grpc_target: str) -> Iterator[Org]:
    identity = create_identity(database_url, unique("watch-"))
    stubs = Stubs(grpc_target, identity.api_key, identity.org_id)
    yield Org(identity, stubs)
    stubs.close()


@pytest.fixture
def notifier(server: ServerThread) -> ChangeNotifier:
    return change_notifier(server.server.database)


@pytest.fixture
def watchers() -> Iterator[Callable[..., Watcher]]:
    """Opens watchers and cancels them all at the end of the test."""
    opened: list[Watcher] = []

    def open_watcher(stubs: Stubs, **request: Any) -> Watcher:
        w = Watcher(stubs, **request)
        opened.append(w)
        return w

    yield open_watcher
    for w in opened:
        w.cancel()


@pytest.fixture
def outage_server(
    private_postgres: PrivatePostgres,
) -> Iterator[tuple[ServerThread, Stubs, str]]:
    """(server, stubs of a new org, its ID) on the test's own PostgreSQL, which the test may stop
    and start: the watch tests' database restarts."""
    upgrade(private_postgres.url)
    identity = create_identity(private_postgres.url, unique("outage-"))
    own = ServerThread(
        ServerSettings(
            database=DatabaseSettings(url=private_postgres.url, pool_size=2),
            bind="127.0.0.1:0",
            auth_cache_seconds=0,
        )
    )
    stubs = Stubs(f"127.0.0.1:{own.port}", identity.api_key, identity.org_id)
    try:
        yield own, stubs, identity.org_id
    finally:
        stubs.close()
        own.stop()
