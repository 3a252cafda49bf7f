"""Fixtures of the RPC tests' WatchSessions modules (their helpers are in ``watching.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flightlog_server.storage.changes import ChangeNotifier, change_notifier
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
