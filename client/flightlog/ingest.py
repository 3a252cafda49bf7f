"""Ingest of MCAP recordings: read them, register them as files of a dataset, group them into a
session. This is what ``flightlog ingest`` does.

Reading (:func:`read_recording`, no server needed) is described in the documentation of
:class:`RecordingSummary`'s module: it hashes every byte, reads the topics from the summary or by
scanning, and salvages what a damaged recording still holds.

Ingesting (:func:`ingest_recordings`) is safe to repeat: running it twice leaves what running
it once leaves.

- **Paths.** Directories are expanded to the ``*.mcap`` files below them. Each file is
  registered under its path relative to a root directory: ``root`` when given, else the deepest
  directory that holds every path given (a directory given counts as holding itself). Files of
  the same name in different folders therefore keep different paths.
- **The dataset** is given by ID (``ds_...``) or by name. A name is reused when exactly one
  dataset of the org carries it and created, with the first file registered, when none does.
  Without one, the dataset is named after the session, else after the root directory.
- **Identity is content.** A recording whose SHA-256 the dataset already holds is not
  registered again: it is reported as already present, whatever its path.
- **The session**, when a name is given, is the org's session of that name, created (with the
  files) when there is none. Files already in it are not added again.
- **No debris.** Nothing is created before a recording has been read: a run in which no file
  can be read creates no dataset and no session, and a session is only created to receive
  files (it is deleted again if adding them fails).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePath

from flightlog import catalog
from flightlog._client import FlightlogClient, resolve_client
from flightlog._mcap import (
    ProgressCallback,
    RecordingError,
    RecordingSummary,
    Recovery,
    TopicSummary,
    read_recording,
)
from flightlog.catalog import Dataset, File
from flightlog.errors import (
    AmbiguousNameError,
    ConflictError,
    FlightlogError,
    InvalidRequestError,
    NotFoundError,
)
from flightlog.session import Session

__all__ = [
    "IngestFailure",
    "IngestResult",
    "IngestedFile",
    "PlannedFile",
    "RecordingError",
    "RecordingSummary",
    "Recovery",
    "TopicSummary",
    "find_session",
    "ingest_recordings",
    "plan_files",
    "read_recording",
    "register_recording",
]

_MAX_FILES_PER_ADD = 10_000  # AddSessionFiles accepts at most this many files per call.
_DEFAULT_DATASET_NAME = "recordings"


@dataclasses.dataclass(frozen=True)
class PlannedFile:
    """A recording to ingest.

    Attributes:
        path: The local file.
        relative_path: Its path in the dataset: relative to the root, with ``/`` separators.
    """

    path: Path
    relative_path: str


def plan_files(
    paths: Sequence[str | Path], root: str | Path | None = None
) -> tuple[Path, list[PlannedFile]]:
    """Expand directories into their ``*.mcap`` files and give each file its dataset path.

    Args:
        paths: Files and directories. A directory stands for every ``*.mcap`` file below it,
            in path order. A file named twice is planned once.
        root: The directory the dataset paths are relative to; default: the deepest directory
            holding every path given (a directory holds itself).

    Returns:
        The root and the files, in the order given.

    Raises:
        ValueError: No paths, a directory without recordings, or a file outside ``root``.
    """
    if not paths:
        raise ValueError("no recordings given")
    # Absolute but not resolved: a symlinked folder keeps the name the user sees.
    given = [Path(os.path.abspath(p)) for p in paths]
    if root is not None:
        base = Path(os.path.abspath(root))
    else:
        base = Path(os.path.commonpath([p if p.is_dir() else p.parent for p in given]))
    planned: dict[Path, PlannedFile] = {}
    for path in given:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.mcap") if p.is_file())
            if not found:
                raise ValueError(f"no MCAP files (*.mcap) in {path}")
        else:
            found = [path]
        for file in found:
            if not file.is_relative_to(base):
                raise ValueError(f"{file} is not inside the root directory {base}")
            relative = PurePath(file.relative_to(base)).as_posix()
            planned.setdefault(file, PlannedFile(file, relative))
    return base, list(planned.values())


@dataclasses.dataclass(frozen=True)
class IngestedFile:
    """A recording that is in the catalog after the ingest.

    Attributes:
        path: The local file.
        summary: What it holds (what was recovered, for a damaged recording).
        file: The catalog file.
        already_present: ``True`` when the dataset already held this content, from an earlier
            ingest, so that nothing was registered.
    """

    path: Path
    summary: RecordingSummary
    file: File
    already_present: bool = False

    @property
    def status(self) -> str:
        """``"added"`` or ``"already present"``."""
        return "already present" if self.already_present else "added"


@dataclasses.dataclass(frozen=True)
class IngestFailure:
    """A recording that could not be ingested.

    Attributes:
        path: The local file.
        error: Why: a :class:`RecordingError` for a file that cannot be read, or the
            :class:`~flightlog.errors.FlightlogError` with which the server refused it.
    """

    path: Path
    error: RecordingError | FlightlogError

    @property
    def reason(self) -> str:
        """Why, in one line."""
        if isinstance(self.error, RecordingError):
            return self.error.reason
        return str(self.error)


@dataclasses.dataclass
class IngestResult:
    """The outcome of :func:`ingest_recordings`.

    Attributes:
        root: The directory the dataset paths are relative to.
        dataset: The dataset, or ``None`` when none existed and nothing was registered.
        dataset_created: Whether this run created the dataset.
        files: The recordings in the catalog after the run, in the order given.
        failures: The recordings that could not be ingested, in the order given.
        session: The session holding the files, when one was asked for and there were files.
        session_created: Whether this run created the session.
        error: A failure that stopped the run part-way (the server became unreachable...);
            the files before it were ingested.
    """

    root: Path
    dataset: Dataset | None = None
    dataset_created: bool = False
    files: list[IngestedFile] = dataclasses.field(default_factory=list)
    failures: list[IngestFailure] = dataclasses.field(default_factory=list)
    session: Session | None = None
    session_created: bool = False
    error: FlightlogError | None = None

    @property
    def added(self) -> list[IngestedFile]:
        """The recordings registered by this run."""
        return [f for f in self.files if not f.already_present]

    @property
    def already_present(self) -> list[IngestedFile]:
        """The recordings the dataset already held."""
        return [f for f in self.files if f.already_present]


def find_session(
    name: str, *, org_id: str | None = None, client: FlightlogClient | None = None
) -> Session | None:
    """Return the org's session with exactly this name, or ``None`` when there is none.

    Raises:
        AmbiguousNameError: Several sessions carry this name.
    """
    c = resolve_client(client)
    matches = [
        s for s in Session.query(name_contains=name, org_id=org_id, client=c) if s.name == name
    ]
    if len(matches) > 1:
        raise AmbiguousNameError("session", name, [s.session_id for s in matches])
    return matches[0] if matches else None


class _DatasetTarget:
    """The dataset of an ingest: found up front, created only when a first file needs it."""

    def __init__(
        self,
        ref: str,
        device_id: str | None,
        org_id: str | None,
        client: FlightlogClient,
        result: IngestResult,
    ) -> None:
        self._name = ref
        self._device_id = device_id
        self._org_id = org_id
        self._client = client
        self._result = result
        try:
            result.dataset = catalog.find_dataset(ref, org_id=org_id, client=client)
        except NotFoundError:
            if ref.startswith("ds_"):
                raise  # an ID must exist; a name is created on first use

    def dataset_id(self) -> str:
        """The dataset's ID, creating the dataset on first use."""
        if self._result.dataset is None:
            self._result.dataset = catalog.create_dataset(
                self._name, self._device_id, org_id=self._org_id, client=self._client
            )
            self._result.dataset_created = True
        return self._result.dataset.dataset_id


def register_recording(
    summary: RecordingSummary,
    dataset_id: str,
    *,
    relative_path: str | None = None,
    device_id: str | None = None,
    unix_epoch_offset_ns: int = 0,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> IngestedFile:
    """Register a read recording as a file of a dataset, one partition per topic, unless the
    dataset already holds its content.

    Args:
        summary: The recording, from :func:`read_recording`.
        dataset_id: The dataset.
        relative_path: The path within the dataset; default: the file name.
        device_id: The device that recorded it; ``None``: the dataset's.
        unix_epoch_offset_ns: Offset that places the recording's times on the Unix epoch.
        org_id: The acting org; ``None`` keeps the client's default.
        client: The client; ``None`` uses the ambient one.

    Returns:
        The file: the one registered, or (``already_present``) the dataset's file with the same
        content (SHA-256), whatever its path.

    Raises:
        ConflictError: The dataset has a different recording at that path.
        FlightlogError: Any other failure of the calls.
    """
    c = resolve_client(client)
    path = relative_path or summary.path.name
    existing = _file_with_content(dataset_id, summary.content_sha256, org_id, c)
    if existing is not None:
        return IngestedFile(summary.path, summary, existing, already_present=True)
    try:
        # The channel retries a lost RegisterFile: it carries a request_id.
        file = catalog.register_file(
            dataset_id,
            path,
            summary.size_bytes,
            device_id=device_id,
            unix_epoch_offset_ns=unix_epoch_offset_ns,
            partitions=summary.partition_specs(),
            content_sha256=summary.content_sha256,
            recovery=summary.recovery.to_file_recovery() if summary.recovery else None,
            org_id=org_id,
            client=c,
        )
    except ConflictError as error:
        # The path is taken: by this very content (a concurrent ingest won the race), by a
        # registration made before files had content hashes, or by another recording.
        existing = _file_with_content(dataset_id, summary.content_sha256, org_id, c)
        if existing is None:
            existing = _legacy_file_at(dataset_id, path, summary.size_bytes, org_id, c)
        if existing is not None:
            return IngestedFile(summary.path, summary, existing, already_present=True)
        raise ConflictError(
            f"the dataset already has a different recording at {path!r}",
            code=error.code,
            reason=error.reason,
            metadata=error.metadata,
        ) from error
    return IngestedFile(summary.path, summary, file)


def _legacy_file_at(
    dataset_id: str, path: str, size_bytes: int, org_id: str | None, client: FlightlogClient
) -> File | None:
    """The dataset's file at ``path`` if it was registered without a content hash (before
    ingest recorded them) with this size: then it is taken for the same recording, as ingest
    used to decide. Reads the dataset's files, which only a path conflict costs."""
    for file in catalog.list_files(dataset_id, org_id=org_id, client=client):
        if file.relative_path == path:
            legacy = file.content_sha256 is None and file.size_bytes == size_bytes
            return file if legacy else None
    return None


def _file_with_content(
    dataset_id: str, content_sha256: str, org_id: str | None, client: FlightlogClient
) -> File | None:
    """The dataset's file with this content, if any."""
    found = catalog.list_files(
        dataset_id, content_sha256=content_sha256, page_size=1, org_id=org_id, client=client
    )
    return next(iter(found), None)


def ingest_recordings(
    paths: Sequence[str | Path],
    dataset: str | None = None,
    *,
    root: str | Path | None = None,
    device_id: str | None = None,
    session_name: str | None = None,
    unix_epoch_offset_ns: int = 0,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
    on_file: Callable[[IngestedFile | IngestFailure], None] | None = None,
    on_progress: Callable[[PlannedFile, int], None] | None = None,
) -> IngestResult:
    """Read recordings, register them in a dataset, and optionally group them into a session.

    See the module documentation for how paths, the dataset, content identity and the session
    are decided. A recording that cannot be read, or that the server refuses on its own
    (invalid, or a different file at its path), is recorded in ``failures`` and the others go
    on. A damaged recording with complete messages is registered with what they hold, marked
    with its recovery.

    Args:
        paths: MCAP files and directories.
        dataset: The dataset's ID or name; default: the session name, else the root
            directory's name.
        root: The directory dataset paths are relative to (see :func:`plan_files`).
        device_id: The device that recorded the files; set on a created dataset and attached
            to the session.
        session_name: The session to create or extend.
        unix_epoch_offset_ns: Offset that places the recordings' times on the Unix epoch.
        org_id: The acting org; ``None`` keeps the client's default.
        client: The client; ``None`` uses the ambient one.
        on_file: Called after each recording, with its outcome.
        on_progress: Called as a recording is read, with the bytes read so far.

    Returns:
        What was ingested. A failure that concerns every file but happens after some were
        ingested (the server going away) stops the run and is returned in ``error``.

    Raises:
        ValueError: No recordings to ingest (see :func:`plan_files`).
        FlightlogError: Before anything is ingested, a failure that concerns every file: the
            device or the dataset ID does not exist, a dataset or session name is ambiguous,
            the server cannot be reached, the API key is refused...
    """
    c = resolve_client(client)
    base, planned = plan_files(paths, root)
    result = IngestResult(root=base)
    # What would make every file fail is checked before anything is read or created.
    if device_id is not None:
        catalog.get_device(device_id, org_id=org_id, client=c)
    target = _DatasetTarget(
        dataset or session_name or base.name or _DEFAULT_DATASET_NAME, device_id, org_id, c, result
    )
    session = find_session(session_name, org_id=org_id, client=c) if session_name else None

    try:
        for item in planned:
            outcome = _ingest_one(
                item, base, target, device_id, unix_epoch_offset_ns, org_id, c, on_progress
            )
            if isinstance(outcome, IngestFailure):
                result.failures.append(outcome)
            else:
                result.files.append(outcome)
            if on_file is not None:
                on_file(outcome)
        if session_name is not None and result.files:
            result.session, result.session_created = _fill_session(
                session, session_name, result.files, device_id, org_id, c
            )
    except FlightlogError as error:
        if not result.files and not result.dataset_created:
            raise
        result.error = error
    return result


def _ingest_one(
    item: PlannedFile,
    root: Path,
    target: _DatasetTarget,
    device_id: str | None,
    unix_epoch_offset_ns: int,
    org_id: str | None,
    client: FlightlogClient,
    on_progress: Callable[[PlannedFile, int], None] | None,
) -> IngestedFile | IngestFailure:
    """Read and register one recording; a failure specific to it is returned, not raised."""
    progress: ProgressCallback | None = None
    if on_progress is not None:
        report = on_progress

        def progress(done: int) -> None:
            report(item, done)

    try:
        summary = read_recording(item.path, on_progress=progress)
    except RecordingError as error:
        return IngestFailure(item.path, error)
    dataset_id = target.dataset_id()  # a failure here concerns every file: it is raised
    try:
        return register_recording(
            summary,
            dataset_id,
            relative_path=item.relative_path,
            device_id=device_id,
            unix_epoch_offset_ns=unix_epoch_offset_ns,
            org_id=org_id,
            client=client,
        )
    except ConflictError as error:
        return IngestFailure(
            item.path,
            ConflictError(
                f"{error.message} (paths are relative to {root}; ingest from a common parent "
                "directory to keep the folders in the paths)",
                code=error.code,
                reason=error.reason,
                metadata=error.metadata,
            ),
        )
    except InvalidRequestError as error:
        return IngestFailure(item.path, error)


def _fill_session(
    session: Session | None,
    name: str,
    files: Sequence[IngestedFile],
    device_id: str | None,
    org_id: str | None,
    client: FlightlogClient,
) -> tuple[Session, bool]:
    """Add the files to the session (created when ``session`` is None); returns it and
    whether it was created. A session created here is deleted again if adding fails."""
    wanted = list(dict.fromkeys(f.file.file_id for f in files))
    if session is not None:
        if device_id is not None:
            session.attach_to_device(device_id)  # a no-op when attached
        present = {f.file_id for f in session.list_files()}
        _add_files(session, [file_id for file_id in wanted if file_id not in present])
        return session, False
    devices = [device_id] if device_id is not None else []
    session = Session.create(name=name, device_ids=devices, caller_org_id=org_id, client=client)
    try:
        _add_files(session, wanted)
    except FlightlogError:
        # Best effort: if the server is gone, the next run finds the session by name and
        # fills it.
        with contextlib.suppress(FlightlogError):
            session.delete()
        raise
    return session, True


def _add_files(session: Session, file_ids: Iterable[str]) -> None:
    """AddSessionFiles in batches of the most the server accepts per call."""
    pending = iter(file_ids)
    while batch := list(itertools.islice(pending, _MAX_FILES_PER_ADD)):
        session.add_files(batch)
