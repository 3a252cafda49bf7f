"""Fixtures of the RPC tests' WatchSessions modules (their helpers are in ``watching.py``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flightlog_server.storage.changes import ChangeNotifier, change_notifier
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
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this test's own, which it may stop (never the shared one)."""
    root = Path(tempfile.mkdtemp(prefix="flightlog-watch-outage-"))
    try:
        cluster = PrivatePostgres(root)
        cluster.start()
        yield cluster
        cluster.destroy()
    finally:
        shutil.rmtree(root, ignore_errors=True)
