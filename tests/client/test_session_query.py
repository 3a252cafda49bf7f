"""``Session.query(filter=..., order_by=...)``, its ``to_pandas()`` and ``sessions ls --filter``."""

from __future__ import annotations

import pytest

from flightlog import FlightlogClient, MetricEntry, Session
from flightlog.errors import InvalidRequestError
from tests.client.cli_support import flightlog
from tests.rpc.factories import unique


@pytest.fixture
def tagged(flightlog_client: FlightlogClient) -> tuple[str, list[Session]]:
    tag = unique("query")
    sessions = [
        Session.create(
            name=f"{tag}-{i}", tags=[tag, "odd" if i % 2 else "even"], client=flightlog_client
        )
        for i in range(5)
    ]
    for i, session in enumerate(sessions):
        session.publish_metrics([MetricEntry("lap_s", 10.0 * (i % 3))], device_id=None)
    return tag, sessions


def test_query_filters_and_orders_by_several_keys(
    flightlog_client: FlightlogClient, tagged: tuple[str, list[Session]]
) -> None:
    tag, _ = tagged
    found = Session.query(
        filter=f'tags:"{tag}" AND (tags:"even" OR metrics.lap_s >= 20)',
        order_by="metrics.lap_s desc, name",
        page_size=2,
        client=flightlog_client,
    )
    names = [s.name for s in found]
    # lap_s by i: 0, 10, 20, 0, 10; selected: even (0, 2, 4) or lap_s >= 20 (2)
    assert names == [f"{tag}-2", f"{tag}-4", f"{tag}-0"]


def test_query_errors_name_the_filter(flightlog_client: FlightlogClient) -> None:
    with pytest.raises(InvalidRequestError, match="filter_text"):
        list(Session.query(filter="nope = 1", client=flightlog_client))


def test_to_pandas_gives_one_row_per_session(
    flightlog_client: FlightlogClient, tagged: tuple[str, list[Session]]
) -> None:
    pytest.importorskip("pandas")
    tag, sessions = tagged
    frame = Session.query(
        filter=f'tags:"{tag}"', order_by="name", client=flightlog_client
    ).to_pandas()
    assert list(frame["name"]) == [f"{tag}-{i}" for i in range(5)]
    assert list(frame["session_id"]) == [s.session_id for s in sessions]
    assert {"start_time", "end_time", "duration_s", "created", "tags"} <= set(frame.columns)
    empty = Session.query(filter='tags:"no-such-tag-anywhere"', client=flightlog_client).to_pandas()
    assert len(empty) == 0 and "session_id" in empty.columns


def test_cli_ls_takes_filter_and_order_by(
    cli_env: dict[str, str], tagged: tuple[str, list[Session]]
) -> None:
    tag, _ = tagged
    result = flightlog(
        "--json", "sessions", "ls", "--filter", f'tags:"{tag}" AND tags:"odd"', "--order-by",
        "name desc",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert [s["name"] for s in result.json_lines()] == [f"{tag}-3", f"{tag}-1"]
    bad = flightlog("sessions", "ls", "--filter", "tags:")
    assert bad.code == 4 and "filter_text" in bad.stderr
