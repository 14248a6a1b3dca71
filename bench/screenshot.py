"""Take docs/screenshot.png: the real explorer page in headless Chromium.

    python bench/screenshot.py [ATLAS_DIR] [--out docs/screenshot.png] [--query "?atlas=...&f=12"]
        [--element .panels] [--wait "#best-faces"] [--click "#panel-tabs >> text=Lobes"]

``--element`` shoots one element instead of the whole page; ``--wait`` waits for a selector
(default: the card title when the query selects a feature); ``--click`` clicks selectors in
order before the shot; ``--scroll`` scrolls a selector into view.

Without ATLAS_DIR a synthetic atlas is built in a temporary folder. Uses Debian's
/usr/bin/chromium through Playwright (never a browser download).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from _app_atlas import build_app_atlas, start_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--disable-background-networking"]


def synthetic_root(tmp: Path) -> Path:
    return build_app_atlas(tmp, n_features=1500)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("atlas_dir", nargs="?", type=Path)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot.png")
    p.add_argument("--query", default="?layer=1&layout=pca&color=lobe:phi:4&f=42&q=0.95&cam=1.4,1.1,0.7")
    p.add_argument("--element", default=None, help="CSS selector of the element to shoot (default: the page)")
    p.add_argument("--wait", action="append", default=[], help="selector to wait for (repeatable)")
    p.add_argument("--click", action="append", default=[], help="selector to click before the shot (repeatable)")
    p.add_argument("--scroll", default=None, help="selector to scroll into view (e.g. inside the card)")
    p.add_argument("--graph", default="#cloud", help="the plot to wait for (#latent-cloud for the Latent view)")
    p.add_argument("--width", type=int, default=1440)
    p.add_argument("--height", type=int, default=1000)
    a = p.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = a.atlas_dir or synthetic_root(Path(tmp))
        proc, base = start_server(root)
        try:
            with sync_playwright() as pw:
                b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = b.new_page(viewport={"width": a.width, "height": a.height})
                page.goto(base + "/" + a.query)
                page.wait_for_function(f"() => {{ const g = document.querySelector('{a.graph} .js-plotly-plot');"
                                       " return g && g._fullData && g._fullData[0] && g._fullData[0].x.length > 0 }",
                                       timeout=60_000)
                for sel in a.wait or (["#card-title"] if "f=" in a.query else []):
                    page.wait_for_selector(sel, timeout=30_000)
                for sel in a.click:
                    page.click(sel)
                    page.wait_for_timeout(1500)
                if a.scroll:
                    page.locator(a.scroll).scroll_into_view_if_needed()
                page.wait_for_timeout(1500)
                a.out.parent.mkdir(parents=True, exist_ok=True)
                if a.element:
                    page.locator(a.element).screenshot(path=str(a.out))
                else:
                    page.screenshot(path=str(a.out), full_page=True)
                b.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
