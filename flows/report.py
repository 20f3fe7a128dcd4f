"""Plain-text tables for the command lines' closing output."""

from __future__ import annotations

from typing import Any


def text_table(rows: list[dict[str, Any]]) -> str:
    """Left-aligned columns named by the first row's keys, with a rule under the header."""
    head = list(rows[0])
    body = [[str(r[k]) for k in head] for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [head, ["-" * w for w in widths], *body])
