"""Real PDF files with a known text layer, for tests/curation/test_pdf.py and benchmarks/bench_pdf.py.

`paper_pdf` lays out a paper the way LaTeX does (reportlab's canvas, Helvetica): a title, two
columns per page written column by column, words hyphenated at the end of a line when they do not
fit, a running header and a page-number footer on every page, and a reference list. It returns the
bytes and the ground truth (the body words in reading order, the hyphenated words, the header
text, the references), so extraction quality is measured against what was put in. The other
helpers make the bad kinds: encrypted (pikepdf/QPDF, a user password), image-only (Pillow writes
a scanned-page PDF), corrupt (a real PDF cut in half).
"""

from __future__ import annotations

import io
from pathlib import Path

GPL = Path("/usr/share/common-licenses/GPL-3")

FALLBACK = ("The kernel schedules runnable threads on each processor according to their weight and the time "
            "they have already consumed. Interrupt handlers run with preemption disabled and defer longer work to "
            "softirqs or threaded handlers so that latency-sensitive tasks are not starved. ")


def source_paragraphs(n: int = 30) -> list[str]:
    """Real English prose: the paragraphs of the GPL-3 text Debian ships in base-files."""
    if GPL.is_file():
        paras = [" ".join(p.split()) for p in GPL.read_text().split("\n\n")]
        paras = [p for p in paras if len(p.split()) >= 40]
        if len(paras) >= n:
            return paras[:n]
    return [f"{FALLBACK * 3} Section {i}." for i in range(n)]


def paper_pdf(paragraphs: list[str], columns: int = 2, references: list[str] | None = None,
              header: str = "Proceedings of the Workshop on Miniature Systems", title: str = "A Study of Paging",
              fontsize: float = 9.0) -> tuple[bytes, dict]:
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfbase.pdfmetrics import stringWidth
    from reportlab.pdfgen import canvas

    references = references or []
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=letter, invariant=1)
    c.setTitle(title)
    c.setAuthor("Test Author")
    width, height = letter
    margin, gutter, lead = 54.0, 18.0, fontsize * 1.25
    col_w = (width - 2 * margin - gutter * (columns - 1)) / columns
    font = "Helvetica"
    hyphenated: list[str] = []

    def wrap(words: list[str]) -> list[str]:
        lines, cur = [], ""
        for w in words:
            cand = f"{cur} {w}" if cur else w
            if stringWidth(cand, font, fontsize) <= col_w:
                cur = cand
                continue
            # hyphenate a long alphabetic word when its first part fits on this line
            if len(w) >= 8 and w.isalpha() and cur:
                for cut in range(len(w) - 3, 2, -1):
                    head = f"{cur} {w[:cut]}-"
                    if stringWidth(head, font, fontsize) <= col_w:
                        lines.append(head)
                        hyphenated.append(w)
                        cur = w[cut:]
                        break
                else:
                    lines.append(cur)
                    cur = w
                continue
            lines.append(cur)
            cur = w
        if cur:
            lines.append(cur)
        return lines

    body_lines: list[str] = []
    for p in paragraphs:
        body_lines += wrap(p.split()) + [""]
    body_lines += ["References", ""]
    for i, r in enumerate(references, 1):
        body_lines += wrap(f"[{i}] {r}".split()) + [""]
    per_col = int((height - 2 * margin - 60) / lead)
    page = 0
    i = 0
    while i < len(body_lines):
        page += 1
        c.setFont(font, 8)
        c.drawString(margin, height - 36, header)
        c.drawCentredString(width / 2, 30, str(page))
        top = height - margin - 20
        if page == 1:
            c.setFont("Helvetica-Bold", 14)
            c.drawString(margin, top, title)
            top -= 30
        c.setFont(font, fontsize)
        for col in range(columns):
            x = margin + col * (col_w + gutter)
            y = top
            rows = per_col - (2 if page == 1 else 0)
            for _ in range(rows):
                if i >= len(body_lines):
                    break
                if body_lines[i]:
                    c.drawString(x, y, body_lines[i])
                y -= lead
                i += 1
        c.showPage()
    c.save()
    words = " ".join(paragraphs).split()
    return buf.getvalue(), {"words": words, "hyphenated": hyphenated, "header": header, "pages": page,
                            "references": references, "title": title}


def encrypted_pdf(data: bytes, password: str = "secret") -> bytes:
    import pikepdf

    out = io.BytesIO()
    with pikepdf.open(io.BytesIO(data)) as pdf:
        pdf.save(out, encryption=pikepdf.Encryption(user=password, owner=password + "-owner", R=6))
    return out.getvalue()


def image_only_pdf(pages: int = 2) -> bytes:
    """A scanned-looking PDF: each page one grey image with drawn strokes, no text layer."""
    from PIL import Image, ImageDraw

    imgs = []
    for p in range(pages):
        im = Image.new("L", (850, 1100), 245)
        d = ImageDraw.Draw(im)
        for row in range(40):
            d.line([(80, 100 + row * 22), (770 - (row * 37 + p * 11) % 200, 100 + row * 22)], fill=40, width=3)
        imgs.append(im.convert("RGB"))
    out = io.BytesIO()
    imgs[0].save(out, format="PDF", save_all=True, append_images=imgs[1:], resolution=100.0)
    return out.getvalue()


def corrupt_pdf(data: bytes) -> bytes:
    """The first half of a real PDF with the rest overwritten: the cross-reference table is gone."""
    half = len(data) // 2
    return data[:half] + b"\x00garbage" * 64
