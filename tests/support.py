"""Test support: a real Flightlog server on a loopback port, identities, authenticated stubs.

The server runs in a background thread with its own event loop, exactly as in production
(``FlightlogServer``), and tests drive it through the generated stubs over TCP.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import gc
import hashlib
import hmac
import os
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog.v1 import (
    catalog_service_pb2_grpc,
    custom_field_service_pb2_grpc,
    session_service_pb2_grpc,
)
from flightlog_server.app import SESSION_RECORDS, FlightlogServer, ServerSettings
from flightlog_server.domain.rules import new_id
from flightlog_server.domain.types import CustomFieldStatus, CustomFieldType
from flightlog_server.rpc.pagination import TokenCodec
from flightlog_server.services.unit_of_work import RecordFormat
from flightlog_server.storage.database import Database, DatabaseSettings
from flightlog_server.storage.identity import IdentityRepository
from flightlog_server.storage.page_token_keys import page_token_keys
from flightlog_server.storage.urls import libpq_conninfo

T = TypeVar("T")


class ServerThread:
    """Runs a FlightlogServer in a thread; ``port`` is its bound loopback port. ``record_format``
    stands for another version of the server's encoding of sessions (default: this one's)."""

    def __init__(
        self,
        settings: ServerSettings,
        record_format: RecordFormat = SESSION_RECORDS,
        *,
        wait_until_serving: bool = True,
    ) -> None:
        """Without ``wait_until_serving`` it returns once the server listens, which may be
        before it serves (while it waits for the database); ``started`` then waits for that."""
        self.settings = settings
        self.record_format = record_format
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: FlightlogServer = self.call(self._create())
        self.port = self.server.port
        self._starting: Future[None] = asyncio.run_coroutine_threadsafe(
            self.server.start(), self.loop
        )
        if wait_until_serving:
            self.started()

    async def _create(self) -> FlightlogServer:
        return FlightlogServer(self.settings, self.record_format)

    def started(self, timeout: float = 60) -> None:
        """Waits until the server serves (its start has returned)."""
        self._starting.result(timeout)

    def call(self, coroutine: Any, timeout: float = 60) -> Any:
        """Runs a coroutine on the server's loop and returns its result."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        if not self._starting.done():
            self._starting.cancel()  # still waiting for the database: safe to cancel
        self.call(self.server.stop(grace=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        # Whatever the server dropped is finalized now, so that a pooled connection it lost
        # fails the test that stops it (pyproject.toml makes that warning an error).
        gc.collect()


@dataclass(frozen=True)
class Identity:
    """A principal with an API key, acting in ``org_id`` (sent as x-org-id unless None)."""

    api_key: str
    org_id: str
    principal_id: str
    api_key_id: str


def run_in_database(url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Runs ``work`` in one transaction on the database at ``url`` (from a test's thread)."""

    async def run() -> T:
        database = Database(DatabaseSettings(url=url, pool_size=1))
        try:
            return await database.run(work)
        finally:
            await database.close()

    return asyncio.run(run())


def run_identity(url: str, work: Callable[[IdentityRepository], Any]) -> Any:
    return run_in_database(url, lambda session: work(IdentityRepository(session)))


def sql(url: str, statement: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
    """Runs one statement on the database at ``url`` (autocommit); the rows it returned."""
    with psycopg.connect(libpq_conninfo(url), autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


@contextmanager
def session_row_locked(url: str, session_id: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose open transaction holds the session's row lock (``FOR UPDATE``), as a
    concurrent writer's would: writes of the session wait until ``rollback()`` or the block's
    end releases it."""
    with psycopg.connect(libpq_conninfo(url)) as holder:
        holder.execute("SELECT 1 FROM sessions WHERE session_id = %s FOR UPDATE", (session_id,))
        yield holder


def define_field(
    url: str,
    org_id: str,
    name: str,
    type_: CustomFieldType,
    enum_values: Sequence[str] = (),
    status: CustomFieldStatus = CustomFieldStatus.READY,
) -> str:
    """Defines a session custom field straight in the database (to seed data without the API,
    in any status); returns its ID."""
    field_id = new_id("custom_field")
    sql(
        url,
        "INSERT INTO custom_fields (org_id, custom_field_id, entity_type, name, type, enum_values,"
        " status, created_by) VALUES (%s, %s, 'session', %s, %s, %s, %s, 'test')",
        (org_id, field_id, name, type_.value, list(enum_values), status.value),
    )
    return field_id


def server_page_token_keys(url: str) -> dict[int, bytes]:
    """The keys the servers on ``url`` sign page tokens with (made now if none exists yet)."""
    return run_in_database(url, page_token_keys)


def page_token_codec(url: str) -> TokenCodec:
    """The servers' own page-token codec: tests sign positions with it that the MAC accepts,
    to reach the checks behind the MAC."""
    return TokenCodec(server_page_token_keys(url))


def b64(data: bytes) -> str:
    """``data`` in unpadded URL-safe base64, the alphabet of page tokens."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def varint(n: int) -> bytes:
    """``n`` as a protobuf varint, written out by hand (for bytes the library would not build)."""
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


def c_heap_in_use() -> int:
    """Bytes the C allocator has handed out and not got back (glibc's ``mallinfo2``):
    protobuf's arenas come from malloc, Python's small objects from its own arenas."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: field ``number`` holding ``payload``."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def seal_page_token(key_id: int, key: bytes, scope: str, payload: bytes) -> str:
    """A page token of any ``payload`` bytes, in the documented wire form (``rpc.pagination``),
    written out here independently of the server's codec:
    ``key_id | HMAC-SHA256(key, key_id | rest)[:16] | len(scope) | scope | payload``."""
    rest = bytes([len(scope.encode())]) + scope.encode() + payload
    mac = hmac.new(key, bytes([key_id]) + rest, hashlib.sha256).digest()[:16]
    return b64(bytes([key_id]) + mac + rest)


def create_identity(url: str, name: str, org_ids: list[str] | None = None) -> Identity:
    """A new principal (named ``name``) in a new org of the same name, or in ``org_ids``."""

    async def work(repo: IdentityRepository) -> Identity:
        orgs = org_ids or [await repo.create_org(name)]
        principal_id = await repo.create_principal(name, "service_account")
        for org_id in orgs:
            await repo.add_member(org_id, principal_id)
        key = await repo.create_api_key(principal_id)
        return Identity(key, orgs[0], principal_id, key.split(".")[0])

    result: Identity = run_identity(url, work)
    return result


if TYPE_CHECKING:
    # grpc-stubs declares the client interceptor bases generic in (request, response); at run
    # time they are plain ABCs that cannot be subscripted, so the parameters exist for mypy only.
    # Requests and responses are any object: a channel also carries raw bytes (hostile input).
    _UnaryUnaryInterceptor = grpc.UnaryUnaryClientInterceptor[object, object]
    _UnaryStreamInterceptor = grpc.UnaryStreamClientInterceptor[object, object]
else:
    _UnaryUnaryInterceptor = grpc.UnaryUnaryClientInterceptor
    _UnaryStreamInterceptor = grpc.UnaryStreamClientInterceptor


class ClientInterceptor(_UnaryUnaryInterceptor, _UnaryStreamInterceptor):
    """A client interceptor of unary and server-streaming calls: ``details`` and ``request``
    see, and may replace, each call's details and request before it is made (by default they
    change nothing)."""

    def details(
        self, details: grpc.ClientCallDetails, *, streaming: bool
    ) -> grpc.ClientCallDetails:
        return details

    def request(self, request: object) -> object:
        return request

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, object], grpc.CallFuture[object]],
        client_call_details: grpc.ClientCallDetails,
        request: object,
    ) -> grpc.CallFuture[object]:
        details = self.details(client_call_details, streaming=False)
        return continuation(details, self.request(request))

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, object], grpc.CallIterator[object]],
        client_call_details: grpc.ClientCallDetails,
        request: object,
    ) -> grpc.CallIterator[object]:
        details = self.details(client_call_details, streaming=True)
        return continuation(details, self.request(request))


class _CallDetails(grpc.ClientCallDetails):
    """An outgoing call's details with other metadata (grpc's own class for them is private)."""

    def __init__(self, original: grpc.ClientCallDetails, metadata: grpc.Metadata) -> None:
        self.method = original.method
        self.timeout = original.timeout
        self.metadata = metadata
        self.credentials = original.credentials
        self.wait_for_ready = original.wait_for_ready
        self.compression = original.compression


class _Metadata(ClientInterceptor):
    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self.metadata = metadata

    def details(
        self, details: grpc.ClientCallDetails, *, streaming: bool
    ) -> grpc.ClientCallDetails:
        return _CallDetails(details, (*(details.metadata or ()), *self.metadata))


class Stubs:
    """The three generated stubs over one channel, with the caller's metadata on every call."""

    def __init__(self, target: str, api_key: str | None, org_id: str | None) -> None:
        metadata: list[tuple[str, str]] = []
        if api_key is not None:
            metadata.append(("authorization", f"Bearer {api_key}"))
        if org_id is not None:
            metadata.append(("x-org-id", org_id))
        self.raw_channel = grpc.insecure_channel(target)
        self.channel = grpc.intercept_channel(self.raw_channel, _Metadata(metadata))
        self.sessions = session_service_pb2_grpc.SessionServiceStub(self.channel)
        self.catalog = catalog_service_pb2_grpc.CatalogServiceStub(self.channel)
        self.custom_fields = custom_field_service_pb2_grpc.CustomFieldServiceStub(self.channel)

    def close(self) -> None:
        self.raw_channel.close()


@dataclass
class RpcFailure:
    """What a failed call told the client: code, ErrorInfo reason and BadRequest fields."""

    code: grpc.StatusCode
    message: str
    reason: str | None
    metadata: dict[str, str]
    fields: dict[str, str]


def failure(error: grpc.RpcError) -> RpcFailure:
    # The errors a call raises are Calls too; rpc_status reads a Call's trailing metadata.
    status: status_pb2.Status | None = (
        rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    )
    reason = None
    metadata: dict[str, str] = {}
    fields: dict[str, str] = {}
    for detail in status.details if status else []:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):  # False (and ``info`` untouched) for another detail type
            reason = info.reason
            metadata = dict(info.metadata)
        elif detail.Unpack(bad):
            fields = {v.field: v.description for v in bad.field_violations}
    return RpcFailure(error.code(), error.details() or "", reason, metadata, fields)


def rpc_error(call: Callable[[], Any]) -> RpcFailure:
    """Runs a call that must fail and returns how it failed."""
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as error:
        return failure(error)
    raise AssertionError("the call succeeded but was expected to fail")


# pytest rewrites the asserts of test modules only: these name what failed themselves.


def assert_invalid(failure: RpcFailure, *fields: str) -> None:
    """INVALID_ARGUMENT with exactly one BadRequest violation per named field."""
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.reason == "INVALID_REQUEST", failure
    assert set(failure.fields) == set(fields), failure.fields


def assert_not_found(failure: RpcFailure, reason: str) -> None:
    """NOT_FOUND with the ErrorInfo ``reason`` (``DEVICE_NOT_FOUND``, ...)."""
    assert failure.code == grpc.StatusCode.NOT_FOUND, failure
    assert failure.reason == reason, failure


# --- Programs outside Python (tests/polyglot) ----------------------------------------------------


def prerequisite_missing(what: str, packages: str) -> NoReturn:
    """Fail in CI, skip elsewhere: ``what`` is missing and Debian's ``packages`` provide it.

    .ci/run installs every prerequisite of the suite, so in CI (``CI=true``) a missing one is a bug
    in .ci/run, never a reason to pass quietly; a developer's machine may simply not have them.
    """
    reason = f"{what} not found; install Debian's {packages} (apt-get install -y {packages})"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason}. CI installs them (.ci/run), so CI must have them.")
    pytest.skip(reason)


def find_programs(names: Sequence[str], packages: str) -> list[str]:
    """The paths of the named programs on PATH; see ``prerequisite_missing`` when one is absent."""
    paths = [shutil.which(name) for name in names]
    missing = [name for name, path in zip(names, paths, strict=True) if path is None]
    if missing:
        prerequisite_missing(", ".join(missing), packages)
    return [path for path in paths if path is not None]


async def run_command(
    argv: Sequence[str], *, cwd: Path, env: dict[str, str], timeout: float
) -> tuple[int, str]:
    """Run a command without blocking the event loop; return its exit code and its output.

    stdout and stderr are merged, in order; past ``timeout`` seconds the command is killed and
    the test fails with what it printed.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        text = output.decode(errors="replace")
        raise AssertionError(f"{argv[0]} timed out after {timeout:.0f}s; output:\n{text}") from None
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")
