"""The README's snippets run as written, so that an edit that breaks one fails the suite.

Every ``sh`` and ``python`` block of README.md runs (see ``tests/docs/snippets.py`` for the
conventions, and how to mark a block that cannot run here), in order, each in a fresh process:

- in a copy of the repository made of the files a fresh clone has (those git tracks, plus new
  ones it does not ignore), with nothing beside it: no ``../shared``, no ``.data``;
- with ``.venv`` linking to the virtualenv running the tests, and ``.data/dev.env`` written as
  ``make run`` writes it, pointing at the test server, in a new org of its own;
- with ``FLIGHTLOG_ENDPOINT``, ``FLIGHTLOG_API_KEY`` and ``FLIGHTLOG_ORG_ID`` set as after the
  tour's first line, for the blocks that read them without sourcing ``dev.env``.

Shell blocks run with ``bash -e -u -o pipefail``; a block passes when it exits 0.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.recordings import REPO_ROOT
from tests.docs.snippets import RUNNERS, Snippet, SnippetError, snippets
from tests.support import ServerThread, create_identity

README = REPO_ROOT / "README.md"
SNIPPETS = snippets(README.read_text())


def _clone_files() -> list[str]:
    """The paths a fresh clone of the working tree would hold."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [path for path in listed.split("\0") if path and (REPO_ROOT / path).is_file()]


@pytest.fixture(scope="module")
def clone(
    tmp_path_factory: pytest.TempPathFactory, server: ServerThread, database_url: str
) -> Iterator[tuple[Path, dict[str, str]]]:
    """A copy of the repository set up as after ``make run``, and the environment of a shell
    that has sourced its ``dev.env``."""
    root = tmp_path_factory.mktemp("clone") / "flightlog"
    for path in _clone_files():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / path, target)
    (root / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    identity = create_identity(database_url, f"readme-{secrets.token_hex(4)}")
    settings = {
        "FLIGHTLOG_ENDPOINT": f"127.0.0.1:{server.port}",
        "FLIGHTLOG_API_KEY": identity.api_key,
        "FLIGHTLOG_ORG_ID": identity.org_id,
    }
    (root / ".data").mkdir()
    (root / ".data" / "dev.env").write_text(
        "".join(f"{name}={value}\n" for name, value in settings.items())
    )
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FLIGHTLOG_", "PYTHON"))
    }
    yield root, {**environment, **settings}


def test_the_readme_has_runnable_snippets() -> None:
    runnable = [s for s in SNIPPETS if s.runnable]
    assert {s.language for s in runnable} == {"sh", "python"}
    assert len(runnable) >= 4  # the tour, two Python clients, buf curl


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.runnable], ids=str)
def test_a_readme_snippet_runs_as_written(
    clone: tuple[Path, dict[str, str]], snippet: Snippet, tmp_path: Path
) -> None:
    root, environment = clone
    script = tmp_path / ("snippet.py" if RUNNERS[snippet.language] == "python" else "snippet.sh")
    script.write_text(snippet.code)
    command = (
        [sys.executable, str(script)]
        if RUNNERS[snippet.language] == "python"
        else ["bash", "-e", "-u", "-o", "pipefail", str(script)]
    )

    completed = subprocess.run(
        command, cwd=root, env=environment, capture_output=True, text=True, timeout=300
    )

    assert completed.returncode == 0, (
        f"README.md {snippet} exited {completed.returncode}\n--- code\n{snippet.code}"
        f"--- stdout\n{completed.stdout}--- stderr\n{completed.stderr}"
    )


# The conventions ---------------------------------------------------------------------------------


def test_snippets_are_found_with_their_language_line_and_skip_reason() -> None:
    markdown = "\n".join(
        [
            "# Title",
            "```sh",
            "echo one",
            "```",
            "text",
            "<!-- snippet: skip (needs a terminal) -->",
            "```python",
            "print(2)",
            "```",
            "```json",
            "{}",
            "```",
        ]
    )

    found = snippets(markdown)

    assert found == [
        Snippet(2, "sh", "echo one\n"),
        Snippet(7, "python", "print(2)\n", skip_reason="needs a terminal"),
        Snippet(10, "json", "{}\n"),
    ]
    assert [s.runnable for s in found] == [True, False, False]


@pytest.mark.parametrize(
    ("markdown", "complaint"),
    [
        ("```\nls\n```", "language"),
        ("<!-- snippet: skip -->\n```sh\nls\n```", "say why"),
        ("<!-- snippet: skip (why) -->\n\n```sh\nls\n```", "just before a fence"),
        ("```sh\nls\n", "never closed"),
    ],
    ids=["no language", "no reason", "not before a fence", "open fence"],
)
def test_a_readme_that_breaks_the_conventions_is_refused(markdown: str, complaint: str) -> None:
    with pytest.raises(SnippetError, match=complaint):
        snippets(markdown)
