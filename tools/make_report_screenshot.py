"""docs/report.png: the top of the evaluation report (rnnsent evaluate --report) of the released gru model on a
stratified, seeded sample of IMDB's test reviews, as headless Chromium shows it.

    python tools/make_report_screenshot.py                 # 300 reviews -> docs/report.png
    python tools/make_report_screenshot.py --reviews 500 --keep reports/gru-500

Needs the report extra (scikit-learn, matplotlib), Captum for the attributions, selenium and Debian's chromium and
chromium-driver (as tests/test_report.py).
"""
import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rnnsent.data.labelled import take_rows  # noqa: E402
from rnnsent.inference.heldout import HeldOut, held_out  # noqa: E402
from rnnsent.inference.loading import load_checkpoint  # noqa: E402
from rnnsent.inference.report import make_report  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def screenshot(page: Path, out: Path, width: int = 1340, height: int = 1500) -> None:
    """`page` opened in headless Chromium, the window's first `height` pixels saved as `out`."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
                     f"--window-size={width},{height}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
        try:
            driver.get(page.resolve().as_uri())
            shot = driver.get_screenshot_as_png()
        finally:
            driver.quit()
    from PIL import Image  # (Pillow comes with matplotlib) 256 colours: a third of the bytes, the same to the eye

    Image.open(io.BytesIO(shot)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT,
                                                         dither=Image.Dither.NONE).save(out, optimize=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reviews", type=int, default=300, help="test reviews in the sample [300]")
    p.add_argument("--out", default=str(ROOT / "docs" / "report.png"), help="the screenshot [docs/report.png]")
    p.add_argument("--keep", default=None, help="also keep the report folder here [a temporary folder]")
    args = p.parse_args()
    loaded = load_checkpoint("gru")
    full = held_out(loaded, "gru", texts=True)
    rows, texts = take_rows(full.split, full.texts, args.reviews)
    held = HeldOut(rows, texts, f"{len(rows)} IMDB test reviews",
                   {**full.source, "rows": len(rows), "sample": "stratified, seeded"})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp) / "report"
        make_report(loaded, held, "gru", folder)
        screenshot(folder / "report.html", Path(args.out))
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
