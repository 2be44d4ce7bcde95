"""HTML pieces of the report: page style, escaping, number formatting, tables, inline PNG figures.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Iterable

CSS = """
body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:26px;margin-bottom:4px} h2{font-size:20px;border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#666;font-size:13px} .notrun{color:#8a6d3b;background:#fcf8e3;padding:8px 12px;border-radius:4px}
.error{color:#a94442;background:#f2dede;padding:8px 12px;border-radius:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} img{max-width:100%;display:block;margin:8px 0}
code{font-size:12px;background:#f6f6f6}
"""


# Marks <body data-images="loaded/total"> once every plot has decoded: what the browser test reads.
SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.plot');
  var ok = 0;
  imgs.forEach(function (i) { if (i.complete && i.naturalWidth > 0) ok += 1; });
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
"""


# ------------------------------------------------------------------------------------ helpers
def esc(x) -> str:
    return html.escape(str(x))


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        return f"{x:,.{digits}f}" if abs(x) < 1e6 else f"{x:.3g}"
    return esc(x)


def table(headers: list[str], rows: Iterable[list], left: int = 1) -> str:
    h = "".join(f'<th class="{"l" if i < left else ""}">{esc(c)}</th>' for i, c in enumerate(headers))
    body = []
    for r in rows:
        body.append("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c if isinstance(c, Raw) else fmt(c)}</td>'
                                      for i, c in enumerate(r)) + "</tr>")
    return f"<table><tr>{h}</tr>{''.join(body)}</table>"


class Raw(str):
    """Already-escaped HTML for a table cell."""


def png(fig) -> str:
    """A matplotlib figure as an embedded <img>."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{data}">'


def figure(w: float = 10, h: float = 3.6, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(w, h))
    return fig, axes
