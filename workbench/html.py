"""Helpers for the self-contained HTML reports (inline CSS, plots as inline PNG): they open offline anywhere."""

from __future__ import annotations

import base64
import io
from html import escape

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em} h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em} td,th{border:1px solid #ddd;padding:3px 7px;
text-align:left;vertical-align:top} th{background:#f4f4f4}
.seq{font-family:ui-monospace,monospace;font-size:.85em;line-height:1.9;white-space:pre-wrap;border:1px solid #eee;
padding:.5em;margin:.4em 0} .seq span{border-radius:2px} .tok-template{border-bottom:2px dotted #888}
.tok-response{border-bottom:2px solid #268bd2} .tok-prompt{border-bottom:2px solid #b58900}
.small{font-size:.85em;color:#555} code{background:#f4f4f4;padding:0 3px} .ctx b{background:#ffe08a}
.hit{background:#d4f4d4} .fail{color:#b00} pre{white-space:pre-wrap}
"""


def png(figure) -> str:
    """A matplotlib figure as an inline <img> (the figure is closed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def table(headers: list[str], rows: list[list]) -> str:
    """Cells are inserted as given (escape text cells before)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, body: list[str]) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title><style>{CSS}</style>'
            f"</head><body>{''.join(body)}</body></html>")
