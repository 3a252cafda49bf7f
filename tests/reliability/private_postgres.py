"""A throwaway PostgreSQL cluster that a test owns, so it can stop and restart it at will.

Never the shared server: ``initdb`` makes a new cluster in a temporary folder, and it listens on
a free loopback port (plus a Unix socket inside its own folder). The binaries are Debian's
(``/usr/lib/postgresql/<version>/bin``) when installed, else the ones bundled with pgserver (the
``embedded`` extra). PostgreSQL refuses to run as root, so under root the cluster belongs to the
``postgres`` system user.

``stop("fast")`` is a clean shutdown (sessions are terminated, a checkpoint is written);
``stop("immediate")`` kills the server like a crash (recovery replays the WAL on the next start).
``start()`` brings it back on the same port.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Literal

__all__ = ["PrivatePostgres", "free_port"]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _binaries() -> Path:
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if debian:
        return Path(debian[-1]).parent
    from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class PrivatePostgres:
    """A PostgreSQL cluster in ``root`` on a fixed port of 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = free_port()
        self.bin = _binaries()
        # Under root the programs run through runuser, not subprocess's ``user=``: that would
        # make Python fork (not vfork) the test process, whose gRPC threads do not survive it.
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")  # KeyError: no such user to run PostgreSQL as
            self._prefix = ["runuser", "-u", "postgres", "--"]
            root.mkdir(parents=True, exist_ok=True)
            shutil.chown(root, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )

    @property
    def url(self) -> str:
        """The libpq URL of the ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} "
            "-c fsync=off -c max_connections=50"
        )
        self._run(
            "pg_ctl", "start", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.log),
            "-o", options,
        )  # fmt: skip

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-w", "-t", "60", "-m", mode)

    def is_running(self) -> bool:
        status = subprocess.run(
            [*self._prefix, str(self.bin / "pg_ctl"), "status", "-D", str(self.data)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return status.returncode == 0

    def destroy(self) -> None:
        if self.data.exists() and self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        # Output goes to files, not pipes: pg_ctl's server child inherits them and would keep a
        # pipe open (and the call hanging) for as long as PostgreSQL runs.
        with open(self.root / f"{program}.out", "ab") as out:
            result = subprocess.run(
                [*self._prefix, str(self.bin / program), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=120,
                cwd=self.root,
            )
        if result.returncode != 0:
            output = (self.root / f"{program}.out").read_text(errors="replace")[-4000:]
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{output}\n{log}")
