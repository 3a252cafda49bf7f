"""Smoke test of a running development server (`make run`), used by `.ci/run`.

Reads the development credentials that `make run` writes to `.data/dev.env`
(`FLIGHTLOG_ENDPOINT`, `FLIGHTLOG_API_KEY`, `FLIGHTLOG_ORG_ID`) from the environment, then, through
the generated stubs only, walks the seed's happy path: a device, a dataset and a file with one
topic, a session on the device, the file added, the session read back with its bounds and its
topic listed.

    set -a; source .data/dev.env; set +a; python -m tests.smoke
"""

from __future__ import annotations

import os
import sys
import uuid

import grpc

from flightlog.v1 import (
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
)


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"smoke: {name} is not set (source .data/dev.env first)")
    return value


def main() -> int:
    endpoint = os.environ.get("FLIGHTLOG_ENDPOINT", "localhost:50051")
    metadata = (
        ("authorization", f"Bearer {_env('FLIGHTLOG_API_KEY')}"),
        ("x-org-id", _env("FLIGHTLOG_ORG_ID")),
    )
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(endpoint) as channel:
        catalog = catalog_service_pb2_grpc.CatalogServiceStub(channel)
        sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        try:
            device = catalog.CreateDevice(
                catalog_service_pb2.CreateDeviceRequest(device_id=name),
                metadata=metadata,
                timeout=30,
            ).device
            dataset = catalog.CreateDataset(
                catalog_service_pb2.CreateDatasetRequest(name=name, device_id=device.device_id),
                metadata=metadata,
                timeout=30,
            ).dataset
            file = catalog.RegisterFile(
                catalog_service_pb2.RegisterFileRequest(
                    dataset_id=dataset.dataset_id,
                    relative_path="flight.mcap",
                    size_bytes=1024,
                    partitions=[
                        catalog_service_pb2.TopicPartitionSpec(
                            topic_name="/odom",
                            message_count=2,
                            extents=[
                                catalog_service_pb2.TimelineExtent(
                                    min_timestamp_ns=1_000, max_timestamp_ns=2_000
                                )
                            ],
                        )
                    ],
                ),
                metadata=metadata,
                timeout=30,
            ).file
            created = sessions.CreateSession(
                session_service_pb2.CreateSessionRequest(name=name, device_ids=[name]),
                metadata=metadata,
                timeout=30,
            ).session
            sessions.AddSessionFiles(
                session_service_pb2.AddSessionFilesRequest(
                    session_id=created.session_id,
                    files=[session_service_pb2.SessionFileSpec(file_id=file.file_id)],
                ),
                metadata=metadata,
                timeout=30,
            )
            fetched = sessions.GetSession(
                session_service_pb2.GetSessionRequest(session_id=created.session_id),
                metadata=metadata,
                timeout=30,
            ).session
            topics = [
                topic.name
                for batch in sessions.ListSessionTopics(
                    session_service_pb2.ListSessionTopicsRequest(session_id=created.session_id),
                    metadata=metadata,
                    timeout=30,
                )
                for topic in batch.topics
            ]
        except grpc.RpcError as exc:
            print(f"smoke: FAILED: {exc}", file=sys.stderr)
            return 1
    observed = (fetched.name, fetched.min_timestamp_ns, fetched.max_timestamp_ns, topics)
    if observed != (name, 1_000, 2_000, ["/odom"]):
        print(f"smoke: FAILED: session {created.session_id} reads back as {observed}")
        return 1
    print(f"smoke: OK: session {created.session_id} with its file and topic at {endpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
