"""A PNG of the report page through headless Chromium (docs/report.png, the report test).
"""

from __future__ import annotations

from pathlib import Path

from minisigma.core.errors import UserError

# ------------------------------------------------------------------------------------ screenshot
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars"]


def chromium_binary() -> str:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise UserError("chromium is not installed (scripts/system-deps.sh installs it)")


def screenshot(page: str | Path, png_out: str | Path, width: int = 1200, height: int = 2400,
               max_height: int | None = None, out_width: int = 800) -> Path:
    """Render the report in headless Chromium and save a PNG, downscaled to `out_width` pixels and
    palette-quantised so it stays small enough for a README."""
    import subprocess
    import tempfile

    from PIL import Image

    page, png_out = Path(page).resolve(), Path(png_out)
    png_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="minisigma-chromium-") as tmp:
        raw = Path(tmp) / "shot.png"
        r = subprocess.run([chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile",
                            f"--window-size={width},{height}", f"--screenshot={raw}", "--virtual-time-budget=5000",
                            page.as_uri()], capture_output=True, text=True, timeout=180)
        if not raw.is_file():
            raise UserError(f"chromium wrote no screenshot: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        img = Image.open(raw).convert("RGB")
    if max_height:
        img = img.crop((0, 0, img.width, min(img.height, max_height)))
    if out_width and img.width > out_width:
        img = img.resize((out_width, round(img.height * out_width / img.width)), Image.LANCZOS)
    img.quantize(colors=64).save(png_out, optimize=True)
    return png_out
