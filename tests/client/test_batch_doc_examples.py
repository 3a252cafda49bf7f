"""The examples in the docstrings of the batch writes run, as written, against a real server.

They run in an org of their own (with the ``max_speed`` field the ``update`` example names),
so that the org-wide custom field does not show in other tests' sessions.
"""

from __future__ import annotations

import doctest
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import flightlog
from flightlog import FlightlogClient, Session, custom_fields, set_default_client
from flightlog._batching import batches
from tests.support import create_identity


@pytest.fixture(scope="module")
def own_org_client(grpc_target: str, database_url: str) -> Iterator[FlightlogClient]:
    """The ambient client, acting in a new org that defines ``max_speed``."""
    identity = create_identity(database_url, f"doc-examples-{secrets.token_hex(4)}")
    client = FlightlogClient(
        grpc_target, api_key=identity.api_key, org_id=identity.org_id, timeout=30
    )
    custom_fields.create_custom_field("max_speed", "number", client=client)
    previous = set_default_client(client)
    yield client
    set_default_client(previous)
    client.close()


@pytest.mark.parametrize(
    "function",
    [Session.create_many, Session.update, flightlog.metrics, batches],
    ids=["Session.create_many", "Session.update", "flightlog.metrics", "batches"],
)
def test_a_docstring_example_runs(
    own_org_client: FlightlogClient, function: Callable[..., Any]
) -> None:
    finder = doctest.DocTestFinder(recurse=False)
    (test,) = finder.find(function, globs={"Session": Session})
    assert test.examples, "the docstring has an example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(test)
    assert result.failed == 0
