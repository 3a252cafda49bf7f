"""A session's file contributions: adding, replacing, removing and listing them, and the bounds
they add up to (DESIGN §3)."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

import grpc
import pytest

from flightlog.v1 import catalog_service_pb2 as catalog_pb
from flightlog.v1 import session_service_pb2 as pb
from tests.rpc.factories import (
    add_files,
    bounds,
    check_paging,
    drain,
    get_session,
    list_session_files,
    make_dataset,
    make_session,
    register_file,
)
from tests.support import Identity, Stubs, rpc_error


def remove_files(stubs: Stubs, session_id: str, *file_ids: str) -> pb.Session:
    request = pb.RemoveSessionFilesRequest(session_id=session_id, file_ids=file_ids)
    return stubs.sessions.RemoveSessionFiles(request).session


@pytest.fixture
def dataset(stubs: Stubs) -> catalog_pb.Dataset:
    return make_dataset(stubs)


# --- ListSessionFiles ----------------------------------------------------------------------------


def test_list_session_files_returns_contributions_in_first_added_order_with_file_details(
    stubs: Stubs, dataset: catalog_pb.Dataset, identity: Identity
) -> None:
    first = register_file(stubs, dataset.dataset_id, [("/a", [(0, 10)])], size_bytes=11)
    second = register_file(stubs, dataset.dataset_id, [("/a", [(0, 10)])], size_bytes=22)
    third = register_file(stubs, dataset.dataset_id, size_bytes=33)
    session = make_session(stubs)
    add_files(stubs, session.session_id, second.file_id)
    add_files(stubs, session.session_id, first.file_id, window=(3, 4))
    add_files(stubs, session.session_id, third.file_id)
    # Re-adding replaces the window but keeps the contribution's place.
    add_files(stubs, session.session_id, second.file_id, window=(5, 6))

    listed = list_session_files(stubs, session.session_id)

    assert [f.file_id for f in listed] == [second.file_id, first.file_id, third.file_id]
    by_id = {f.file_id: f for f in listed}
    assert (
        by_id[second.file_id].range_min_timestamp_ns,
        by_id[second.file_id].range_max_timestamp_ns,
    ) == (5, 6)
    assert (
        by_id[first.file_id].range_min_timestamp_ns,
        by_id[first.file_id].range_max_timestamp_ns,
    ) == (3, 4)
    assert not by_id[third.file_id].HasField("range_min_timestamp_ns")
    assert not by_id[third.file_id].HasField("range_max_timestamp_ns")
    for file, size in ((first, 11), (second, 22), (third, 33)):
        entry = by_id[file.file_id]
        assert entry.session_id == session.session_id
        assert entry.dataset_id == dataset.dataset_id
        assert entry.relative_path == file.relative_path
        assert entry.size_bytes == size
        assert entry.created_by == identity.principal_id
        assert entry.modified_by == identity.principal_id
        assert entry.created.ToNanoseconds() <= entry.modified.ToNanoseconds()


def test_list_session_files_streams_batches_that_resume_without_repeats(
    stubs: Stubs, dataset: catalog_pb.Dataset
) -> None:
    files = [register_file(stubs, dataset.dataset_id) for _ in range(5)]
    session = make_session(stubs)
    for file in files:
        add_files(stubs, session.session_id, file.file_id)

    check_paging(
        stubs.sessions.ListSessionFiles,
        pb.ListSessionFilesRequest,
        "files",
        lambda f: f.file_id,
        [f.file_id for f in files],
        session_id=session.session_id,
    )


def test_list_session_files_of_a_session_without_files_is_empty(stubs: Stubs) -> None:
    session = make_session(stubs)
    assert list_session_files(stubs, session.session_id) == []


def test_list_session_files_of_an_unknown_session_is_not_found(stubs: Stubs) -> None:
    failure = rpc_error(lambda: list_session_files(stubs, "ss_doesnotexist"))
    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert failure.reason == "SESSION_NOT_FOUND"


def test_list_session_files_rejects_a_page_token_of_another_session(
    stubs: Stubs, dataset: catalog_pb.Dataset
) -> None:
    file = register_file(stubs, dataset.dataset_id)
    one, other = make_session(stubs), make_session(stubs)
    add_files(stubs, one.session_id, file.file_id)
    add_files(stubs, one.session_id, register_file(stubs, dataset.dataset_id).file_id)
    _, tokens = drain(
        stubs.sessions.ListSessionFiles(
            pb.ListSessionFilesRequest(session_id=one.session_id, page_size=1)
        ),
        "files",
    )

    failure = rpc_error(
        lambda: stubs.sessions.ListSessionFiles(
            pb.ListSessionFilesRequest(session_id=other.session_id, page_token=tokens[0])
        )
    )

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "INVALID_PAGE_TOKEN"


# --- bounds arithmetic ---------------------------------------------------------------------------


def test_a_whole_file_contributes_its_extents_plus_its_offset(
    stubs: Stubs, dataset: catalog_pb.Dataset
) -> None:
    file = register_file(
        stubs, dataset.dataset_id, [("/a", [(100, 200)]), ("/b", [(150, 300), (50, 60)])], 1_000
    )
    session = add_files(stubs, make_session(stubs).session_id, file.file_id)
    assert bounds(session) == (1_050, 1_300)


def test_a_windowed_contribution_counts_its_window_as_given(
    stubs: Stubs, dataset: catalog_pb.Dataset
) -> None:
    file = register_file(stubs, dataset.dataset_id, [("/a", [(100, 200)])], 1_000)
    # The window is activity-bounded: taken as given even outside the file's data.
    session = add_files(stubs, make_session(stubs).session_id, file.file_id, window=(5, 7))
    assert bounds(session) == (5, 7)


def test_bounds_span_whole_and_windowed_contributions(
    stubs: Stubs, dataset: catalog_pb.Dataset
) -> None:
    whole = register_file(stubs, dataset.dataset_id, [("/a", [(100, 200)])])
    windowed = register_file(stubs, dataset.dataset_id, [("/a", [(0, 10_000)])])
    session = make_session(stubs)
    add_files(stubs, session.session_id, whole.file_id)
    session = add_files(stubs, session.session_id, windowed.file_id, window=(150, 900))
    assert bounds(session) == (100, 900)
    assert bounds(get_session(stubs, session.session_id)) == (100, 900)


def test_a_file_without_extents_contributes_nothing_to_the_bounds(
    stubs: Stubs, dataset: catalog_pb.Dataset
) -> None:
    empty = register_file(stubs, dataset.dataset_id, [("/silent", [])])
    bounded = register_file(stubs, dataset.dataset_id, [("/a", [(10, 20)])])
    session = add_files(stubs, make_session(stubs).session_id, empty.file_id)
    assert bounds(session) is None

    session = add_files(stubs, session.session_id, bounded.file_id)
    assert bounds(session) == (10, 20)


def test_removing_the_last_bounded_contribution_leaves_no_bounds(
    stubs: Stubs, dataset: catalog_pb.Dataset
) -> None:
    empty = register_file(stubs, dataset.dataset_id)
    first = register_file(stubs, dataset.dataset_id, [("/a", [(10, 20)])])
    second = register_file(stubs, dataset.dataset_id, [("/a", [(30, 40)])])
    session = make_session(stubs)
    add_files(stubs, session.session_id, empty.file_id, first.file_id, second.file_id)

    assert bounds(remove_files(stubs, session.session_id, second.file_id)) == (10, 20)
    session = remove_files(stubs, session.session_id, first.file_id)

    assert bounds(session) is None
    assert bounds(get_session(stubs, session.session_id)) is None
    assert [f.file_id for f in list_session_files(stubs, session.session_id)] == [empty.file_id]


def test_re_adding_a_file_replaces_its_window(stubs: Stubs, dataset: catalog_pb.Dataset) -> None:
    file = register_file(stubs, dataset.dataset_id, [("/a", [(100, 200)])])
    session = add_files(stubs, make_session(stubs).session_id, file.file_id, window=(10, 20))
    assert bounds(session) == (10, 20)

    session = add_files(stubs, session.session_id, file.file_id, window=(500, 600))
    assert bounds(session) == (500, 600)
    session = add_files(stubs, session.session_id, file.file_id)
    assert bounds(session) == (100, 200)
    [listed] = list_session_files(stubs, session.session_id)
    assert not listed.HasField("range_min_timestamp_ns")


# --- validation ----------------------------------------------------------------------------------


def test_the_same_file_twice_in_one_call_is_invalid_naming_the_repeat(
    stubs: Stubs, dataset: catalog_pb.Dataset
) -> None:
    file = register_file(stubs, dataset.dataset_id)
    session = make_session(stubs)
    failure = rpc_error(lambda: add_files(stubs, session.session_id, file.file_id, file.file_id))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "files[1].file_id" in failure.fields
    assert "files[0].file_id" not in failure.fields
    assert list_session_files(stubs, session.session_id) == []


def test_a_half_open_window_is_rejected_naming_the_missing_bound(
    stubs: Stubs, dataset: catalog_pb.Dataset
) -> None:
    file = register_file(stubs, dataset.dataset_id)
    session = make_session(stubs)
    failure = rpc_error(
        lambda: stubs.sessions.AddSessionFiles(
            pb.AddSessionFilesRequest(
                session_id=session.session_id,
                files=[
                    pb.SessionFileSpec(file_id=file.file_id, range_min_timestamp_ns=5),
                ],
            )
        )
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "INVALID_REQUEST"
    assert "files[0].range_max_timestamp_ns" in failure.fields


def test_a_window_with_min_above_max_is_rejected_naming_its_min(
    stubs: Stubs, dataset: catalog_pb.Dataset
) -> None:
    file = register_file(stubs, dataset.dataset_id)
    session = make_session(stubs)
    failure = rpc_error(lambda: add_files(stubs, session.session_id, file.file_id, window=(9, 8)))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "files[0].range_min_timestamp_ns" in failure.fields


def test_unknown_and_foreign_files_fail_the_whole_call_naming_every_id(
    stubs: Stubs, other_stubs: Stubs, dataset: catalog_pb.Dataset
) -> None:
    kept = register_file(stubs, dataset.dataset_id, [("/a", [(10, 20)])])
    fresh = register_file(stubs, dataset.dataset_id, [("/a", [(0, 90)])])
    foreign = register_file(other_stubs, make_dataset(other_stubs).dataset_id, [("/a", [(0, 5)])])
    session = add_files(stubs, make_session(stubs).session_id, kept.file_id, window=(10, 20))

    failure = rpc_error(
        lambda: add_files(stubs, session.session_id, fresh.file_id, "fl_unknown", foreign.file_id)
    )

    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert failure.reason == "FILE_NOT_FOUND"
    assert failure.metadata["ids"].split(", ") == ["fl_unknown", foreign.file_id]
    after = get_session(stubs, session.session_id)
    assert after.revision == session.revision
    assert bounds(after) == (10, 20)
    assert [f.file_id for f in list_session_files(stubs, session.session_id)] == [kept.file_id]


def test_removing_files_that_are_not_in_the_session_is_a_no_op(
    stubs: Stubs, dataset: catalog_pb.Dataset
) -> None:
    kept = register_file(stubs, dataset.dataset_id, [("/a", [(10, 20)])])
    never_added = register_file(stubs, dataset.dataset_id, [("/a", [(0, 90)])])
    session = add_files(stubs, make_session(stubs).session_id, kept.file_id)

    after = remove_files(stubs, session.session_id, never_added.file_id, "fl_unknown")

    assert bounds(after) == (10, 20)
    assert [f.file_id for f in list_session_files(stubs, session.session_id)] == [kept.file_id]


# --- tenancy -------------------------------------------------------------------------------------


def test_another_org_cannot_list_add_or_remove_this_orgs_contributions(
    stubs: Stubs, other_stubs: Stubs, dataset: catalog_pb.Dataset
) -> None:
    file = register_file(stubs, dataset.dataset_id, [("/a", [(10, 20)])])
    foreign_file = register_file(other_stubs, make_dataset(other_stubs).dataset_id)
    session = add_files(stubs, make_session(stubs).session_id, file.file_id)

    failures = [
        rpc_error(lambda: list_session_files(other_stubs, session.session_id)),
        rpc_error(lambda: add_files(other_stubs, session.session_id, foreign_file.file_id)),
        rpc_error(lambda: remove_files(other_stubs, session.session_id, file.file_id)),
    ]

    assert [f.code for f in failures] == [grpc.StatusCode.NOT_FOUND] * 3
    assert [f.reason for f in failures] == ["SESSION_NOT_FOUND"] * 3
    after = get_session(stubs, session.session_id)
    assert after.revision == session.revision
    assert [f.file_id for f in list_session_files(stubs, session.session_id)] == [file.file_id]


# --- concurrency ---------------------------------------------------------------------------------


def expected_bounds(
    contributions: Sequence[pb.SessionFile], windows: dict[str, tuple[int, int] | None]
) -> tuple[int, int] | None:
    """The bounds recomputed on the client: each contribution's window, or its file's."""
    spans = [
        (c.range_min_timestamp_ns, c.range_max_timestamp_ns)
        if c.HasField("range_min_timestamp_ns")
        else windows[c.file_id]
        for c in contributions
    ]
    present = [s for s in spans if s is not None]
    if not present:
        return None
    return min(s[0] for s in present), max(s[1] for s in present)


def test_concurrent_adds_and_removes_leave_bounds_equal_to_the_stored_contributions(
    stubs: Stubs, dataset: catalog_pb.Dataset
) -> None:
    files = [
        register_file(stubs, dataset.dataset_id, [("/a", [(i * 100, i * 100 + 50 + i)])], i * 7)
        for i in range(8)
    ]
    files.append(register_file(stubs, dataset.dataset_id))  # no extents
    windows = {
        f.file_id: (f.min_timestamp_ns, f.max_timestamp_ns)
        if f.HasField("min_timestamp_ns")
        else None
        for f in files
    }
    session = make_session(stubs)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(25):
                chosen = rng.sample(files, rng.randint(1, 3))
                if rng.random() < 0.6:
                    window = None
                    if rng.random() < 0.4:
                        low = rng.randint(-1_000, 2_000)
                        window = (low, low + rng.randint(0, 500))
                    add_files(
                        stubs, session.session_id, *(f.file_id for f in chosen), window=window
                    )
                else:
                    remove_files(stubs, session.session_id, *(f.file_id for f in chosen))
        except BaseException as error:  # noqa: BLE001 - re-raised by the test thread below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    stored = get_session(stubs, session.session_id)
    assert bounds(stored) == expected_bounds(list_session_files(stubs, session.session_id), windows)
