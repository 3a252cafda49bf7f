"""Who is calling: an API key and the call's org scope resolved to a :class:`Caller`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from flightlog_server.domain.errors import OrgAccessDenied, OrgRequired, Unauthenticated
from flightlog_server.domain.types import Caller
from flightlog_server.storage.database import Database
from flightlog_server.storage.identity import Authenticated, IdentityRepository


class Authenticator:
    """Resolves call metadata to a Caller, caching good keys for ``cache_seconds``.

    The cache spares a database round trip per call; a revoked key is refused at the latest
    ``cache_seconds`` after revocation (0 disables the cache).
    """

    def __init__(self, database: Database, cache_seconds: float) -> None:
        self.database = database
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Authenticated]] = {}

    async def caller(self, metadata: Mapping[str, str], request_id: str) -> Caller:
        header = metadata.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("missing 'authorization: Bearer <api key>' metadata")
        who = await self._authenticate(key.strip())
        org_id = metadata.get("x-org-id", "").strip()
        if org_id:
            if org_id not in who.org_ids:
                raise OrgAccessDenied("the caller is not a member of the org named by x-org-id")
        elif len(who.org_ids) == 1:
            (org_id,) = who.org_ids
        else:
            raise OrgRequired(
                "the caller belongs to several orgs (or none): name one with x-org-id metadata"
            )
        return Caller(principal_id=who.principal_id, org_id=org_id, request_id=request_id)

    async def _authenticate(self, key: str) -> Authenticated:
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]

        async def lookup(session: Any) -> Authenticated:
            return await IdentityRepository(session).authenticate(key)

        who = await self.database.run(lookup)
        if self.cache_seconds > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now + self.cache_seconds, who)
        return who
