"""Cutting request items into calls: flightlog._batching.batches against a reference chunker."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flightlog._batching import batches, field_size
from flightlog.v1 import session_service_pb2 as pb


def reference_chunks(
    sizes: list[int], max_items: int, max_bytes: int, weights: list[int] | None, max_weight: int
) -> list[list[int]]:
    """The greedy chunking, on a whole list: start a new chunk when the next item would break
    a limit (an item over a limit on its own gets a chunk of its own)."""
    chunks: list[list[int]] = []
    for index, size in enumerate(sizes):
        weight = weights[index] if weights is not None else 0
        if chunks:
            last = chunks[-1]
            fits = (
                len(last) < max_items
                and sum(sizes[i] for i in last) + size <= max_bytes
                and sum(weights[i] for i in last) + weight <= max_weight
                if weights is not None
                else len(last) < max_items and sum(sizes[i] for i in last) + size <= max_bytes
            )
            if fits:
                last.append(index)
                continue
        chunks.append([index])
    return chunks


limits = st.tuples(
    st.lists(st.integers(0, 50), max_size=60),
    st.integers(1, 7),
    st.integers(1, 120),
    st.one_of(st.none(), st.integers(0, 40)),
)


@given(limits, st.data())
def test_batches_match_the_reference_chunker(
    case: tuple[list[int], int, int, int | None], data: st.DataObject
) -> None:
    sizes, max_items, max_bytes, max_weight = case
    weights = (
        data.draw(st.lists(st.integers(0, 15), min_size=len(sizes), max_size=len(sizes)))
        if max_weight is not None
        else None
    )
    indexes = list(range(len(sizes)))
    got = list(
        batches(
            indexes,
            lambda i: sizes[i],
            max_items=max_items,
            max_bytes=max_bytes,
            weight_of=(lambda i: weights[i]) if weights is not None else None,
            max_weight=max_weight,
        )
    )
    assert got == reference_chunks(sizes, max_items, max_bytes, weights, max_weight or 0)
    for chunk in got:  # every chunk within the limits, unless one item alone breaks them
        assert 1 <= len(chunk) <= max_items
        assert len(chunk) == 1 or sum(sizes[i] for i in chunk) <= max_bytes


@given(
    st.lists(st.integers(0, 50), max_size=40),
    st.integers(1, 7),
    st.integers(1, 120),
    st.integers(0, 40),
)
def test_a_failing_input_yields_the_closed_chunks_and_drops_the_one_being_filled(
    sizes: list[int], max_items: int, max_bytes: int, fail_at: int
) -> None:
    fail_at = min(fail_at, len(sizes))

    def items() -> Iterator[int]:
        for index in range(len(sizes)):
            if index == fail_at:
                raise ValueError(f"bad item {index}")
            yield index

    got: list[list[int]] = []
    with pytest.raises(ValueError) if fail_at < len(sizes) else contextlib.nullcontext():
        for chunk in batches(items(), lambda i: sizes[i], max_items=max_items, max_bytes=max_bytes):
            got.append(chunk)
    before = reference_chunks(sizes[:fail_at], max_items, max_bytes, None, 0)
    if fail_at < len(sizes) and before and len(before[-1]) < max_items:
        before = before[:-1]  # the chunk being filled when the input failed
    assert got == before


@given(st.lists(st.text(max_size=300), max_size=30))
def test_field_size_is_the_encoded_size_of_a_repeated_item(names: list[str]) -> None:
    items = [pb.CreateSessionRequest(name=name) for name in names]
    request = pb.BatchCreateSessionsRequest(requests=items)
    assert request.ByteSize() == sum(field_size(item.ByteSize()) for item in items)


def test_the_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        list(batches([1], lambda i: i, max_items=0))
