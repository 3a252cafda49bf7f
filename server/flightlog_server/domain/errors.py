"""Domain errors: plain exceptions that say what went wrong in the caller's terms.

They know nothing of gRPC; ``flightlog_server.rpc.errors`` maps each class to a status code, an
``ErrorInfo`` reason and, for invalid input, ``BadRequest`` field violations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class DomainError(Exception):
    """Base class of every error a caller may see."""

    reason = "INTERNAL"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})


@dataclass(frozen=True)
class FieldViolation:
    """One offending request field, named by its path (``files[2].range_min_timestamp_ns``)."""

    field: str
    description: str


class InvalidArgument(DomainError):
    """The request breaks a rule; ``violations`` names every offending field."""

    reason = "INVALID_REQUEST"

    def __init__(
        self,
        violations: Sequence[FieldViolation],
        message: str | None = None,
        *,
        omitted: int = 0,
    ) -> None:
        self.violations = list(violations)
        # Violations that were counted but not kept (``rules.MAX_VIOLATIONS_KEPT``).
        self.omitted = omitted
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations[:3])
        more = len(self.violations) - 3 + omitted
        if more > 0:
            summary += f" (and {more} more)"
        super().__init__(message or f"invalid request: {summary}")

    @classmethod
    def one(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class InvalidPageToken(InvalidArgument):
    reason = "INVALID_PAGE_TOKEN"

    def __init__(self, description: str) -> None:
        super().__init__([FieldViolation("page_token", description)])


class Unauthenticated(DomainError):
    reason = "UNAUTHENTICATED"


class OrgRequired(DomainError):
    """``x-org-id`` was omitted by a principal that is not in exactly one org."""

    reason = "ORG_REQUIRED"


class OrgAccessDenied(DomainError):
    reason = "ORG_ACCESS_DENIED"


class NotFound(DomainError):
    """A resource does not exist in the caller's org (or exists in another org)."""

    reason = "NOT_FOUND"

    def __init__(self, kind: str, ids: Sequence[str]) -> None:
        self.kind = kind
        self.ids = list(ids)
        self.reason = f"{kind.upper()}_NOT_FOUND"
        # The first IDs in the message, up to 50 in the metadata (a status must stay small).
        listed = ", ".join(self.ids[:50]) + (
            f" (+{len(self.ids) - 50})" if len(self.ids) > 50 else ""
        )
        shown = ", ".join(self.ids[:3]) + (" …" if len(self.ids) > 3 else "")
        super().__init__(f"{kind.replace('_', ' ')} not found: {shown}", metadata={"ids": listed})


class AlreadyExists(DomainError):
    reason = "ALREADY_EXISTS"


class RequestIdReused(DomainError):
    reason = "REQUEST_ID_REUSED"


class RevisionMismatch(DomainError):
    """The caller's expected revision is stale; nothing was changed."""

    reason = "REVISION_MISMATCH"

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(
            f"expected revision {expected} but the resource is at revision {actual}",
            metadata={"expected_revision": str(expected), "current_revision": str(actual)},
        )


class RevisionExpired(DomainError):
    """A watch asked for history older than what is retained."""

    reason = "REVISION_EXPIRED"

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(
            f"revision {requested} is older than the retained history (oldest {oldest})",
            metadata={"oldest_revision": str(oldest)},
        )


class LimitExceeded(DomainError):
    reason = "LIMIT_EXCEEDED"


class DatabaseUnavailable(DomainError):
    reason = "DATABASE_UNAVAILABLE"


class ShuttingDown(DomainError):
    """The server is stopping; the call can be retried elsewhere (a watch resumes)."""

    reason = "SHUTTING_DOWN"


class DeadlineExceeded(DomainError):
    reason = "DEADLINE_EXCEEDED"
