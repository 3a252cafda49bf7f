"""Orgs, principals, memberships and API keys.

An API key reads ``ak_<id>.<secret>``. Only a SHA-256 digest of the secret is stored; the key is
shown once, when it is created, and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog_server.domain.errors import AlreadyExists, NotFound, Unauthenticated
from flightlog_server.domain.rules import is_valid_id, new_id
from flightlog_server.storage.models import ApiKey, Membership, Org, Principal


@dataclass(frozen=True)
class Authenticated:
    """A principal whose key checked out, with the orgs it belongs to."""

    principal_id: str
    org_ids: frozenset[str]


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class IdentityRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def authenticate(self, api_key: str) -> Authenticated:
        key_id, sep, secret = api_key.partition(".")
        if not sep or not secret or not is_valid_id(key_id, "api_key"):
            raise Unauthenticated("the API key is malformed")
        row = (
            await self.session.execute(
                select(ApiKey.secret_hash, ApiKey.revoked, ApiKey.principal_id).where(
                    ApiKey.api_key_id == key_id
                )
            )
        ).one_or_none()
        # Compare even when the key is unknown, so timing does not tell which part was wrong.
        stored = row.secret_hash if row is not None else b"\0" * 32
        matches = hmac.compare_digest(stored, _digest(secret))
        if row is None or not matches or row.revoked is not None:
            raise Unauthenticated("the API key is unknown or revoked")
        org_ids = (
            await self.session.scalars(
                select(Membership.org_id).where(Membership.principal_id == row.principal_id)
            )
        ).all()
        return Authenticated(row.principal_id, frozenset(org_ids))

    # --- administration (the admin CLI) ---

    async def create_org(self, name: str) -> str:
        if await self.session.scalar(select(Org.org_id).where(Org.name == name)):
            raise AlreadyExists(f"an org named {name!r} exists")
        org_id = new_id("org")
        await self.session.execute(insert(Org).values(org_id=org_id, name=name))
        return org_id

    async def find_org(self, name: str) -> str | None:
        return await self.session.scalar(select(Org.org_id).where(Org.name == name))

    async def create_principal(self, name: str, kind: str) -> str:
        if await self.session.scalar(select(Principal.principal_id).where(Principal.name == name)):
            raise AlreadyExists(f"a principal named {name!r} exists")
        principal_id = new_id("principal")
        await self.session.execute(
            insert(Principal).values(principal_id=principal_id, name=name, kind=kind)
        )
        return principal_id

    async def find_principal(self, name: str) -> str | None:
        return await self.session.scalar(
            select(Principal.principal_id).where(Principal.name == name)
        )

    async def add_member(self, org_id: str, principal_id: str) -> None:
        if await self.session.get(Org, org_id) is None:
            raise NotFound("org", [org_id])
        if await self.session.get(Principal, principal_id) is None:
            raise NotFound("principal", [principal_id])
        if await self.session.get(Membership, (org_id, principal_id)) is None:
            self.session.add(Membership(org_id=org_id, principal_id=principal_id))
            await self.session.flush()

    async def create_api_key(self, principal_id: str) -> str:
        """Creates a key and returns it; this is the only time the secret exists in clear."""
        if await self.session.get(Principal, principal_id) is None:
            raise NotFound("principal", [principal_id])
        key_id = new_id("api_key")
        secret = secrets.token_urlsafe(32)
        await self.session.execute(
            insert(ApiKey).values(
                api_key_id=key_id, principal_id=principal_id, secret_hash=_digest(secret)
            )
        )
        return f"{key_id}.{secret}"

    async def revoke_api_key(self, api_key_id: str) -> None:
        """Revokes a key; revoking a revoked key is a no-op."""
        if await self.session.get(ApiKey, api_key_id) is None:
            raise NotFound("api_key", [api_key_id])
        await self.session.execute(
            update(ApiKey)
            .where(ApiKey.api_key_id == api_key_id, ApiKey.revoked.is_(None))
            .values(revoked=func.now())
        )
