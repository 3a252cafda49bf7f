"""The client's wire behaviour against a scripted in-process gRPC server (no database).

Credentials and org on every call, deadlines, the retry policy, stream resumption from the last
token or revision, and what the ergonomic methods put in their requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from flightlog import (
    FlightlogClient,
    InvalidRequestError,
    MetricEntry,
    NotSet,
    RetrySettings,
    Session,
    UnavailableError,
    catalog,
    metrics,
)
from flightlog.v1 import (
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    session_service_pb2_grpc,
)
from flightlog.v1 import session_service_pb2 as pb


@dataclasses.dataclass
class Received:
    """One call as the server saw it."""

    method: str
    request: Any
    metadata: dict[str, str]
    time_remaining: float | None


class ScriptedSessions(session_service_pb2_grpc.SessionServiceServicer):
    """A SessionService whose behaviour each test scripts."""

    def __init__(self) -> None:
        self.calls: list[Received] = []
        self.failures: dict[str, list[grpc.StatusCode]] = {}
        self.list_script: Callable[[pb.ListSessionsRequest, grpc.ServicerContext], Iterator[Any]]
        self.watch_script: Callable[[pb.WatchSessionsRequest, grpc.ServicerContext], Iterator[Any]]

    def _record(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        self.calls.append(
            Received(
                method,
                request,
                {k: v for k, v in context.invocation_metadata() if isinstance(v, str)},
                context.time_remaining(),
            )
        )
        pending = self.failures.get(method)
        if pending:
            context.abort(pending.pop(0), f"{method} scripted failure")

    def of(self, method: str) -> list[Received]:
        return [call for call in self.calls if call.method == method]

    @staticmethod
    def session(session_id: str = "ss_1", **fields: Any) -> pb.Session:
        return pb.Session(session_id=session_id, org_id=fields.pop("org_id", "og_1"), **fields)

    def CreateSession(self, request: Any, context: Any) -> Any:
        self._record("CreateSession", request, context)
        return pb.CreateSessionResponse(session=self.session(name=request.name or None))

    def GetSession(self, request: Any, context: Any) -> Any:
        self._record("GetSession", request, context)
        return pb.GetSessionResponse(session=self.session(request.session_id))

    def UpdateSession(self, request: Any, context: Any) -> Any:
        self._record("UpdateSession", request, context)
        return pb.UpdateSessionResponse(session=self.session(request.session_id, name="after"))

    def AddSessionFiles(self, request: Any, context: Any) -> Any:
        self._record("AddSessionFiles", request, context)
        return pb.AddSessionFilesResponse(
            session=self.session(request.session_id, min_timestamp_ns=1, max_timestamp_ns=9)
        )

    def PublishSessionMetrics(self, request: Any, context: Any) -> Any:
        self._record("PublishSessionMetrics", request, context)
        return pb.PublishSessionMetricsResponse(
            succeeded=[
                pb.Metric(name=m.name, value=m.value, session_id=request.session_id)
                for m in request.metrics
            ]
        )

    def BatchCreateSessions(self, request: Any, context: Any) -> Any:
        self._record("BatchCreateSessions", request, context)
        return pb.BatchCreateSessionsResponse(
            sessions=[
                self.session(f"ss_{item.request_id}", name=item.name or None)
                for item in request.requests
            ]
        )

    def PublishMetrics(self, request: Any, context: Any) -> Any:
        self._record("PublishMetrics", request, context)
        return pb.PublishMetricsResponse(
            responses=[
                pb.PublishSessionMetricsResponse(
                    succeeded=[
                        pb.Metric(name=m.name, value=m.value, session_id=item.session_id)
                        for m in item.metrics
                    ]
                )
                for item in request.requests
            ]
        )

    def ListSessions(self, request: Any, context: Any) -> Any:
        self._record("ListSessions", request, context)
        yield from self.list_script(request, context)

    def WatchSessions(self, request: Any, context: Any) -> Any:
        self._record("WatchSessions", request, context)
        yield from self.watch_script(request, context)


class ScriptedCatalog(catalog_service_pb2_grpc.CatalogServiceServicer):
    """A CatalogService that fails CreateDevice with UNAVAILABLE and loses a RegisterFile."""

    def __init__(self) -> None:
        self.create_device_calls = 0
        self.register_calls: list[Any] = []

    def CreateDevice(self, request: Any, context: Any) -> Any:
        self.create_device_calls += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "database unavailable")

    def RegisterFile(self, request: Any, context: Any) -> Any:
        # The first attempt "commits" but its answer is lost; the retry finds the path taken.
        self.register_calls.append(request)
        if len(self.register_calls) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        context.abort(grpc.StatusCode.ALREADY_EXISTS, "the dataset has a file at that path")

    def ListFiles(self, request: Any, context: Any) -> Any:
        # Only the first registration "committed": it is found by its content hash.
        committed = [
            catalog_service_pb2.File(
                file_id="fl_registered",
                dataset_id=r.dataset_id,
                relative_path=r.relative_path,
                size_bytes=r.size_bytes,
                content_sha256=r.content_sha256,
            )
            for r in self.register_calls[:1]
            if r.content_sha256 == request.content_sha256
        ]
        yield catalog_service_pb2.ListFilesResponse(files=committed)


@dataclasses.dataclass
class Harness:
    sessions: ScriptedSessions
    catalog: ScriptedCatalog
    client: FlightlogClient


@pytest.fixture
def harness() -> Iterator[Harness]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    # Unscripted RPCs answer UNIMPLEMENTED, from the generated base classes.
    # The generated stubs (.pyi) declare every RPC of a servicer base abstract; at run time the
    # base class answers the unscripted ones with UNIMPLEMENTED, which is what these tests want.
    sessions, catalog_servicer = ScriptedSessions(), ScriptedCatalog()  # type: ignore[abstract]
    session_service_pb2_grpc.add_SessionServiceServicer_to_server(sessions, server)
    catalog_service_pb2_grpc.add_CatalogServiceServicer_to_server(catalog_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = FlightlogClient(
        f"127.0.0.1:{port}",
        api_key="key-123",
        org_id="og_default",
        timeout=7.0,
        retry=RetrySettings(initial_backoff_s=0.01, max_backoff_s=0.05, stream_resumes=3),
    )
    try:
        yield Harness(sessions, catalog_servicer, client)
    finally:
        client.close()
        server.stop(None)


def _batch(ids: list[str], token: str) -> pb.ListSessionsResponse:
    return pb.ListSessionsResponse(
        sessions=[ScriptedSessions.session(i) for i in ids], next_page_token=token
    )


# Metadata and deadlines ------------------------------------------------------------------------


def test_every_call_carries_the_key_and_the_default_org(harness: Harness) -> None:
    Session.from_id("ss_1", client=harness.client)

    (call,) = harness.sessions.of("GetSession")
    assert call.metadata["authorization"] == "Bearer key-123"
    assert call.metadata["x-org-id"] == "og_default"


def test_an_org_argument_replaces_the_default_org_for_that_call(harness: Harness) -> None:
    Session.create(name="n", caller_org_id="og_other", client=harness.client)
    Session.from_id("ss_1", owner_org_id="og_third", client=harness.client)

    assert harness.sessions.of("CreateSession")[0].metadata["x-org-id"] == "og_other"
    assert harness.sessions.of("GetSession")[0].metadata["x-org-id"] == "og_third"


def test_methods_of_a_loaded_session_act_in_its_own_org(harness: Harness) -> None:
    session = Session.from_id("ss_1", client=harness.client)  # the fake returns org og_1
    session.put_tags(["x"])

    assert harness.sessions.of("UpdateSession")[0].metadata["x-org-id"] == "og_1"


def test_unary_calls_get_the_default_deadline(harness: Harness) -> None:
    Session.from_id("ss_1", client=harness.client)

    remaining = harness.sessions.of("GetSession")[0].time_remaining
    assert remaining is not None and 5.0 < remaining < 7.5  # the client default, 7 s


# Retries ----------------------------------------------------------------------------------------


def test_idempotent_calls_are_retried_on_unavailable(harness: Harness) -> None:
    harness.sessions.failures["GetSession"] = [grpc.StatusCode.UNAVAILABLE] * 2

    session = Session.from_id("ss_7", client=harness.client)

    assert session.session_id == "ss_7"
    assert len(harness.sessions.of("GetSession")) == 3


def test_creates_are_retried_with_the_same_request_id(harness: Harness) -> None:
    harness.sessions.failures["CreateSession"] = [grpc.StatusCode.UNAVAILABLE]

    Session.create(name="n", client=harness.client)
    Session.create(name="n", client=harness.client)

    first, retry, second = (c.request.request_id for c in harness.sessions.of("CreateSession"))
    assert first and first == retry
    assert second != first


def test_a_batch_create_is_retried_with_the_same_request_ids(harness: Harness) -> None:
    harness.sessions.failures["BatchCreateSessions"] = [grpc.StatusCode.UNAVAILABLE]

    sessions = Session.create_many(
        [{"name": "a"}, {"name": "b", "request_id": "mine"}], client=harness.client
    )

    first, retry = (c.request for c in harness.sessions.of("BatchCreateSessions"))
    assert first == retry
    generated, given = (item.request_id for item in first.requests)
    assert generated and given == "mine"
    assert [s.name for s in sessions] == ["a", "b"]


def test_publish_across_sessions_is_retried(harness: Harness) -> None:
    harness.sessions.failures["PublishMetrics"] = [grpc.StatusCode.UNAVAILABLE]

    result = metrics.publish(
        {"ss_a": [MetricEntry("x", 1.0)], "ss_b": [MetricEntry("x", 2.0)]},
        device_id=None,
        client=harness.client,
    )

    assert len(harness.sessions.of("PublishMetrics")) == 2
    assert [(m.session_id, m.value) for m in result.succeeded] == [("ss_a", 1.0), ("ss_b", 2.0)]


def test_calls_that_are_not_safe_to_repeat_are_not_retried(harness: Harness) -> None:
    with pytest.raises(UnavailableError, match="database unavailable"):
        catalog.create_device("dv_1", client=harness.client)

    assert harness.catalog.create_device_calls == 1


def test_other_failures_are_not_retried(harness: Harness) -> None:
    harness.sessions.failures["GetSession"] = [grpc.StatusCode.INVALID_ARGUMENT]

    with pytest.raises(InvalidRequestError):
        Session.from_id("bad", client=harness.client)

    assert len(harness.sessions.of("GetSession")) == 1


def test_a_registration_whose_answer_was_lost_is_found_and_reused(harness: Harness) -> None:
    from flightlog.ingest import read_recording, register_recording
    from tests.client.recordings import BY_NAME

    summary = read_recording(BY_NAME["rosbag2_talker.mcap"].path)

    ingested = register_recording(summary, "ds_1", client=harness.client)

    assert ingested.already_present
    assert ingested.file.file_id == "fl_registered"
    first, retry = harness.catalog.register_calls
    assert first == retry
    assert [p.topic_name for p in first.partitions] == ["/rosout", "/parameter_events", "/topic"]


# Streams ----------------------------------------------------------------------------------------


def test_a_broken_list_stream_resumes_from_the_last_token(harness: Harness) -> None:
    def script(request: pb.ListSessionsRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        if request.page_token == "":
            yield _batch(["ss_1", "ss_2"], "t1")
            context.abort(grpc.StatusCode.UNAVAILABLE, "server restarting")
        elif request.page_token == "t1":
            yield _batch(["ss_3"], "t2")
            yield _batch(["ss_4"], "")

    harness.sessions.list_script = script

    ids = [s.session_id for s in Session.for_org(client=harness.client)]

    assert ids == ["ss_1", "ss_2", "ss_3", "ss_4"]
    assert [c.request.page_token for c in harness.sessions.of("ListSessions")] == ["", "t1"]


def test_a_stream_lost_after_its_last_batch_is_not_called_again(harness: Harness) -> None:
    def script(request: pb.ListSessionsRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        yield _batch(["ss_1"], "")
        context.abort(grpc.StatusCode.UNAVAILABLE, "gone")

    harness.sessions.list_script = script

    assert [s.session_id for s in Session.for_org(client=harness.client)] == ["ss_1"]
    assert len(harness.sessions.of("ListSessions")) == 1


def test_a_stream_that_never_recovers_raises_after_bounded_attempts(harness: Harness) -> None:
    def script(request: pb.ListSessionsRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        context.abort(grpc.StatusCode.UNAVAILABLE, "still down")
        yield  # pragma: no cover - makes this a generator

    harness.sessions.list_script = script

    with pytest.raises(UnavailableError, match="still down"):
        list(Session.for_org(client=harness.client))


def test_an_invalid_page_token_is_raised_not_resumed(harness: Harness) -> None:
    def script(request: pb.ListSessionsRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        yield _batch(["ss_1"], "t1")
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad page token")

    harness.sessions.list_script = script

    with pytest.raises(InvalidRequestError, match="bad page token"):
        list(Session.for_org(client=harness.client))
    assert len(harness.sessions.of("ListSessions")) == 1


def test_list_filters_reach_the_request(harness: Harness) -> None:
    harness.sessions.list_script = lambda request, context: iter([_batch([], "")])

    list(Session.for_dataset("ds_1", owner_org_id="og_x", client=harness.client))
    list(Session.for_device("dv_1", client=harness.client))

    first, second = harness.sessions.of("ListSessions")
    assert first.request.filter.dataset_id == "ds_1"
    assert first.metadata["x-org-id"] == "og_x"
    assert second.request.filter.device_id == "dv_1"


def test_watch_resumes_after_the_last_revision(harness: Harness) -> None:
    def script(request: pb.WatchSessionsRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        start = request.after_revision
        if start == 10:
            yield pb.WatchSessionsResponse(
                changes=[
                    pb.SessionChange(
                        revision=11,
                        session_id="ss_1",
                        kind=pb.SESSION_CHANGE_KIND_CREATED,
                        session=ScriptedSessions.session("ss_1"),
                    )
                ],
                revision=11,
            )
            yield pb.WatchSessionsResponse(revision=15)  # filtered-out changes advance it
            context.abort(grpc.StatusCode.UNAVAILABLE, "restart")
        else:
            yield pb.WatchSessionsResponse(
                changes=[
                    pb.SessionChange(
                        revision=16, session_id="ss_1", kind=pb.SESSION_CHANGE_KIND_DELETED
                    )
                ],
                revision=16,
            )

    harness.sessions.watch_script = script

    changes = Session.watch(10, kinds=["created", "deleted"], client=harness.client)
    first, second = next(changes), next(changes)
    changes.close()

    assert (first.revision, first.kind, first.session is not None) == (11, "created", True)
    assert (second.revision, second.kind, second.session) == (16, "deleted", None)
    requests = [c.request for c in harness.sessions.of("WatchSessions")]
    assert [r.after_revision for r in requests] == [10, 15]
    assert list(requests[0].kinds) == [
        pb.SESSION_CHANGE_KIND_CREATED,
        pb.SESSION_CHANGE_KIND_DELETED,
    ]


# What the methods send --------------------------------------------------------------------------


def test_update_distinguishes_not_set_from_clearing(harness: Harness) -> None:
    session = Session.from_id("ss_1", client=harness.client)

    session.update(name=None)
    session.update(description="d", name=NotSet)
    session.update(description=NotSet)

    first, second, third = (c.request for c in harness.sessions.of("UpdateSession"))
    assert first.name.WhichOneof("action") == "clear"
    assert not first.HasField("description")
    assert second.description.set == "d" and not second.HasField("name")
    assert not third.HasField("name") and not third.HasField("description")
    assert not third.HasField("metadata_changeset")
    assert not third.HasField("custom_fields_changeset")
    assert session.name == "after"


def test_shorthands_send_changesets(harness: Harness) -> None:
    session = Session.from_id("ss_1", client=harness.client)

    session.put_metadata({"pilot": "alice"})
    session.remove_metadata(["weather.condition"])
    session.put_tags(["a"])
    session.remove_tags(["b"])
    session.set_custom_field("weather", "clear")
    session.clear_custom_fields(["speed"])

    requests = [c.request for c in harness.sessions.of("UpdateSession")]
    assert requests[0].metadata_changeset.put_fields["pilot"] == "alice"
    assert list(requests[1].metadata_changeset.remove_fields) == ["weather.condition"]
    assert list(requests[2].metadata_changeset.put_tags) == ["a"]
    assert list(requests[3].metadata_changeset.remove_tags) == ["b"]
    assert requests[4].custom_fields_changeset.set_fields["weather"].string_value == "clear"
    assert list(requests[5].custom_fields_changeset.clear_fields) == ["speed"]


def test_publish_metrics_device_choice(harness: Harness) -> None:
    session = Session.from_id("ss_1", client=harness.client)
    entries = [MetricEntry(name="cpu.usage_max", value=87.2)]

    result = session.publish_metrics(entries)
    session.publish_metrics(entries, device_id=None)
    session.publish_metrics(entries, device_id="dv_robot01")

    inferred, none, explicit = (c.request for c in harness.sessions.of("PublishSessionMetrics"))
    assert inferred.WhichOneof("device") is None
    assert none.WhichOneof("device") == "no_device"
    assert explicit.device_id == "dv_robot01"
    assert [m.name for m in result.succeeded] == ["cpu.usage_max"]
    assert result.failed == []


def test_add_files_accepts_ids_files_and_windows(harness: Harness) -> None:
    session = Session.from_id("ss_1", client=harness.client)
    file = catalog.File(file_id="fl_c")

    session.add_file("fl_a")
    session.add_file(file, range_min_timestamp_ns=1, range_max_timestamp_ns=2)

    whole, window = (c.request.files[0] for c in harness.sessions.of("AddSessionFiles"))
    assert whole.file_id == "fl_a" and not whole.HasField("range_min_timestamp_ns")
    assert (window.file_id, window.range_min_timestamp_ns, window.range_max_timestamp_ns) == (
        "fl_c",
        1,
        2,
    )
    assert (session.min_timestamp_ns, session.max_timestamp_ns) == (1, 9)


def test_create_sends_every_argument(harness: Harness) -> None:
    Session.create(
        name="flight-2026-04-23-001",
        device_ids=["dv_a", "dv_b"],
        description="formation flight #4",
        metadata={"pilot": "alice"},
        tags=["pre-flight-check"],
        custom_fields={"weather": "clear"},
        client=harness.client,
    )

    request = harness.sessions.of("CreateSession")[0].request
    assert request.name == "flight-2026-04-23-001"
    assert list(request.device_ids) == ["dv_a", "dv_b"]
    assert request.description == "formation flight #4"
    assert request.metadata["pilot"] == "alice"
    assert list(request.tags) == ["pre-flight-check"]
    assert request.custom_fields["weather"].string_value == "clear"
    assert request.request_id


def test_requests_without_a_catalog_service_answer_unimplemented_as_internal_error(
    harness: Harness,
) -> None:
    from flightlog import InternalError

    with pytest.raises(InternalError) as caught:
        catalog.get_device("dv_1", client=harness.client)
    assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED


# The command streams listings -------------------------------------------------------------------


@pytest.mark.parametrize("json_mode", [False, True])
def test_ls_prints_the_first_batch_before_the_stream_ends(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, json_mode: bool
) -> None:
    import io
    import threading
    import time

    from flightlog.cli import run

    release = threading.Event()

    def script(request: pb.ListSessionsRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        yield _batch(["ss_first_a", "ss_first_b"], "t1")
        assert release.wait(30), "the test never saw the first batch"
        yield _batch(["ss_second_with_a_longer_id"], "")

    harness.sessions.list_script = script
    monkeypatch.setenv("FLIGHTLOG_ENDPOINT", harness.client.endpoint)
    monkeypatch.setenv("FLIGHTLOG_API_KEY", "key-123")
    stdout, stderr = io.StringIO(), io.StringIO()
    codes: list[int] = []
    args = ["--json"] if json_mode else []
    worker = threading.Thread(
        target=lambda: codes.append(run([*args, "sessions", "ls"], stdout=stdout, stderr=stderr))
    )
    worker.start()
    deadline = time.monotonic() + 30
    while "ss_first_b" not in stdout.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    printed_before_the_end = stdout.getvalue()
    release.set()
    worker.join(30)

    assert "ss_first_b" in printed_before_the_end
    assert "ss_second" not in printed_before_the_end
    assert codes == [0], stderr.getvalue()
    lines = stdout.getvalue().splitlines()
    if json_mode:
        assert [line.count('"session_id"') for line in lines] == [1, 1, 1]
    else:
        assert lines[0].split()[0] == "SESSION"
        assert [line.split()[0] for line in lines[1:]] == [
            "ss_first_a",
            "ss_first_b",
            "ss_second_with_a_longer_id",
        ]
