"""Development credentials for ``make run``: one org, one principal and one API key, created on
the first start and reused afterwards, written to ``.data/dev.env`` for the CLI and client."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flightlog_server.domain.errors import Unauthenticated
from flightlog_server.storage.database import Database, DatabaseSettings
from flightlog_server.storage.identity import IdentityRepository

DEV_NAME = "dev"


@dataclass(frozen=True)
class DevCredentials:
    endpoint: str
    api_key: str
    org_id: str

    def banner(self, port: int) -> str:
        host = self.endpoint.rsplit(":", 1)[0]
        endpoint = f"{host}:{port}"
        return "\n".join(
            [
                "",
                f"Flightlog is serving on {endpoint}",
                f"  API key: {self.api_key}",
                f"  org:     {self.org_id}",
                "  credentials: .data/dev.env (FLIGHTLOG_ENDPOINT, FLIGHTLOG_API_KEY, "
                "FLIGHTLOG_ORG_ID)",
                "",
                "Try it from another shell:",
                "  set -a; . .data/dev.env; set +a",
                "  .venv/bin/flightlog sessions create --name first-flight",
                "  .venv/bin/flightlog sessions ls",
                "",
                "or with buf curl (server reflection, no protos needed):",
                "  .venv/bin/buf curl --protocol grpc --http2-prior-knowledge \\",
                f"    -H 'authorization: Bearer {self.api_key}' \\",
                '    -d \'{"name": "first-flight"}\' \\',
                f"    http://{endpoint}/flightlog.v1.SessionService/CreateSession",
                "",
                "Ctrl-C stops the server and the database.",
                "",
            ]
        )


def _read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                parts = shlex.split(value)
                values[key.strip()] = parts[0] if parts else ""
    return values


async def bootstrap_dev_credentials(url: str, env_file: Path, bind: str) -> DevCredentials:
    """Reuses the key in ``env_file`` when it still works; otherwise creates what is missing."""
    previous = _read_env(env_file)

    async def work(session: Any) -> tuple[str, str]:
        repo = IdentityRepository(session)
        key = previous.get("FLIGHTLOG_API_KEY", "")
        if key:
            try:
                who = await repo.authenticate(key)
                if len(who.org_ids) == 1:
                    return key, next(iter(who.org_ids))
            except Unauthenticated:
                pass
        org_id = await repo.find_org(DEV_NAME) or await repo.create_org(DEV_NAME)
        principal_id = await repo.find_principal(DEV_NAME) or await repo.create_principal(
            DEV_NAME, "user"
        )
        await repo.add_member(org_id, principal_id)
        return await repo.create_api_key(principal_id), org_id

    database = Database(DatabaseSettings(url=url, pool_size=1))
    try:
        api_key, org_id = await database.run(work)
    finally:
        await database.close()
    endpoint = bind.replace("0.0.0.0", "localhost").replace("[::]", "localhost")
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.write_text(
        f"FLIGHTLOG_ENDPOINT={shlex.quote(endpoint)}\n"
        f"FLIGHTLOG_API_KEY={shlex.quote(api_key)}\n"
        f"FLIGHTLOG_ORG_ID={shlex.quote(org_id)}\n"
    )
    env_file.chmod(0o600)
    return DevCredentials(endpoint=endpoint, api_key=api_key, org_id=org_id)
