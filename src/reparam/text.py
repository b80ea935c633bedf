"""Console text shared by every layer: the progress-callback convention and the fixed-width table writer.

Long work reports progress through an optional ``Progress`` callback (the CLI passes ``print``); library
users pass ``None`` to stay quiet. Every text table (verify report, benchmarks, demo summary) is written by
:func:`text_table`, so they all line up the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

__all__ = ["Progress", "first_line", "say", "shorten", "text_table"]

Progress = Callable[[str], None]


def say(progress: Progress | None, msg: str) -> None:
    """Send ``msg`` to ``progress`` when one is given (library calls without a callback stay quiet)."""
    if progress is not None:
        progress(msg)


MAX_LINE = 500
"""Longest error line shown: a message quoting a file's content (a row, a path) is cut there, with '...'."""


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in '...' when cut (values quoted in errors stay short)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (its class name when the message is empty), cut to
    ``MAX_LINE`` characters, ending in '...' (a message may quote a hostile file's content)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return shorten(lines[0] if lines else type(error).__name__, MAX_LINE)


def columns(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """Column names over all rows, in first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    return cols


def text_table(rows: Sequence[Mapping[str, object]], cols: Sequence[str] | None = None) -> str:
    """A fixed-width table of ``rows``: header line, first column left-aligned, the others right-aligned.

    ``cols`` picks and orders the columns (default: every column, first-seen order); a missing cell is blank.
    """
    if not rows:
        raise ValueError("rows must hold at least one row")
    cols = list(cols) if cols is not None else columns(rows)
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        pairs = enumerate(zip(values, widths, strict=True))
        return "  ".join(f"{v:<{w}}" if i == 0 else f"{v:>{w}}" for i, (v, w) in pairs).rstrip()

    return "\n".join([line(cols), *(line(row) for row in cells)])
