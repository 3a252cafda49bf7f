"""Fenced code blocks of a Markdown document, as the README test runs them.

A block is a fence of three backticks whose info string names its language (```` ```sh ````,
```` ```python ````). Blocks in ``sh``, ``bash``, ``shell`` and ``python`` are runnable; a block
in any other language (``text``, ``json``, ``proto``...) is documentation and is not run. A
runnable block that cannot run as the test runs it (it starts a server, needs a database, holds
placeholders) is marked by an HTML comment on the line just before its fence, which Markdown does
not show::

    <!-- snippet: skip (starts the server; the test runs against its own) -->

The reason in parentheses is required, so that the README says why a block is not checked.
"""

from __future__ import annotations

import dataclasses
import re

__all__ = ["RUNNERS", "Snippet", "SnippetError", "snippets"]

RUNNERS = {"sh": "bash", "bash": "bash", "shell": "bash", "python": "python"}
"""The runnable languages, and what runs them."""

_FENCE = re.compile(r"^```(?P<info>.*)$")
_SKIP = re.compile(r"^<!--\s*snippet:\s*skip\b(?P<rest>.*?)-->\s*$")
_REASON = re.compile(r"^\s*\((?P<reason>[^)]+)\)\s*$")


class SnippetError(ValueError):
    """The document breaks the conventions above (an unlabelled block, a skip without reason)."""


@dataclasses.dataclass(frozen=True)
class Snippet:
    """One fenced block.

    Attributes:
        line: The line of its opening fence (1-based).
        language: The first word of the fence's info string.
        code: The block's content.
        skip_reason: Why it is not run, when a skip marker precedes it.
    """

    line: int
    language: str
    code: str
    skip_reason: str | None = None

    @property
    def runnable(self) -> bool:
        """Whether the README test runs it."""
        return self.language in RUNNERS and self.skip_reason is None

    def __str__(self) -> str:
        return f"line {self.line} ({self.language})"


def snippets(markdown: str) -> list[Snippet]:
    """Every fenced block of ``markdown``, in order.

    Raises:
        SnippetError: A block has no language, a skip marker has no reason or no block after
            it, or a fence is left open.
    """
    lines = markdown.splitlines()
    found: list[Snippet] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        marker = _SKIP.match(lines[index])
        if marker and not (index + 1 < len(lines) and _FENCE.match(lines[index + 1])):
            raise SnippetError(f"line {index + 1}: a skip marker must be just before a fence")
        if not opening:
            index += 1
            continue
        language = opening["info"].strip().split(" ")[0]
        if not language:
            raise SnippetError(f"line {index + 1}: name the block's language after the fence")
        end = next((i for i in range(index + 1, len(lines)) if lines[i].startswith("```")), None)
        if end is None:
            raise SnippetError(f"line {index + 1}: the block is never closed")
        reason = None
        previous = _SKIP.match(lines[index - 1]) if index > 0 else None
        if previous:
            given = _REASON.match(previous["rest"])
            if not given:
                raise SnippetError(f"line {index}: say why the block is skipped: skip (why)")
            reason = given["reason"].strip()
        code = "\n".join(lines[index + 1 : end]) + "\n"
        found.append(Snippet(index + 1, language, code, reason))
        index = end + 1
    return found
