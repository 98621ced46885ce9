"""HTML fragments every report section uses: escaping, a figure's section, a "not drawn" note.

Below ``html`` (the page) and the section modules (``tasks``, ``adaptive``), so a section can draw its figures
without importing the page that includes it.
"""

from __future__ import annotations

import base64
import html
from typing import Any

from scaling_train.report.figures import Figure


def esc(s: Any) -> str:
    """``str(s)`` escaped for HTML text and attribute values."""
    return html.escape(str(s))


def figure_html(fig: Figure) -> str:
    """A figure's section: title, the PNG inlined as base64, caption."""
    b64 = base64.b64encode(fig.png).decode()
    return (
        f"<section class='fig' id='fig-{fig.key}'><h2>{esc(fig.title)}</h2>"
        f"<img alt='{esc(fig.title)}' src='data:image/png;base64,{b64}'>"
        f"<p class='caption'>{esc(fig.caption)}</p></section>"
    )


def nodata_html(key: str, title: str, reason: str) -> str:
    """The section of a figure that could not be drawn, saying why."""
    return (
        f"<section class='fig' id='fig-{key}'><h2>{esc(title)}</h2>"
        f"<div class='nodata'>Not drawn: {esc(reason)}</div></section>"
    )
