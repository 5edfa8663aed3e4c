"""`mixcd report --html`: the report as one self-contained page (tables, notes, plots inline) to share.

Nothing is linked: the plots are embedded as base64 PNG data, the style is inline, there is no
script, so the file opens the same from a mail attachment, a wiki upload or a browser offline.
"""

from __future__ import annotations

import base64
import html
import re
import time
from collections.abc import Sequence
from pathlib import Path

from ..artifacts import atomic_path
from .render import Section

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #1b1b1b; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
p.meta { color: #555; font-size: .9rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .85rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: .3rem .5rem; text-align: right; white-space: nowrap; }
th { background: #f1f3f5; position: sticky; top: 0; }
td.text, th.text { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85rem; color: #555; }
code { background: #f1f3f5; padding: 0 .2rem; }
"""
TEXT_COLUMNS = ("experiment", "config", "sampler", "verdict")


def _inline(text: str) -> str:
    """Escaped text with `code` spans kept as code."""
    parts = re.split(r"`([^`]*)`", text)
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    text = [h in TEXT_COLUMNS for h in head]
    cls = [' class="text"' if t else "" for t in text]
    out = ["<table>", "<thead><tr>" + "".join(f"<th{c}>{html.escape(h)}</th>" for h, c in zip(head, cls,
                                                                                              strict=True))
           + "</tr></thead>", "<tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td{c}>{_inline(str(v))}</td>" for v, c in zip(row, cls, strict=True))
                   + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    return (f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
            f"<figcaption>{name}</figcaption></figure>")


def render(title: str, sections: Sequence[Section], images: Sequence[Path], sources: Sequence[str] = ()) -> str:
    """The page: title, where the runs came from, every section (text, table, list), then every plot."""
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="meta">made {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} by <code>mixcd report'
            f"</code> from {', '.join(f'<code>{html.escape(s)}</code>' for s in sources)}</p>"]
    for section in sections:
        body += [f"<p>{_inline(t)}</p>" for t in section.text]
        if section.head:
            body.append(_table(section.head, section.rows))
        if section.items:
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in section.items) + "</ul>")
    if images:
        body.append("<h2>Plots</h2>")
        body += [_figure(p) for p in images]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_html(path: Path, title: str, sections: Sequence[Section], images: Sequence[Path],
               sources: Sequence[str] = ()) -> Path:
    """Write the page atomically (a reader never sees half of it)."""
    with atomic_path(path) as tmp:
        tmp.write_text(render(title, sections, images, sources), encoding="utf-8")
    return path
