"""Screenshots of attrnet serve's page for the docs: the real server on 127.0.0.1, the distribution's Chromium
driven by Playwright, images chosen, results shown, at desktop width and at phone width (375 px).

usage: python benchmarks/serve_screenshots.py MODEL IMAGE [IMAGE ...] [--out docs/img] [--only-present]
Chromium: $ATTRNET_CHROMIUM, else chromium-headless-shell or chromium on the PATH (apt-get install
chromium-headless-shell); `playwright install` is not needed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

CANDIDATES = ("/usr/lib/chromium/chromium-headless-shell", "chromium-headless-shell", "/usr/lib/chromium/chromium",
              "chromium", "chromium-browser", "google-chrome")


def find_browser() -> str:
    if os.environ.get("ATTRNET_CHROMIUM"):
        return os.environ["ATTRNET_CHROMIUM"]
    for name in CANDIDATES:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.access(path, os.X_OK):
            return path
    raise SystemExit("no Chromium found: apt-get install chromium-headless-shell, or set ATTRNET_CHROMIUM")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--only-present", action="store_true", help="tick 'show only the attributes present' (phone)")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "attrnet", "serve", args.model, "--port", str(port), "--device",
                             "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=find_browser(), args=["--no-sandbox", "--disable-gpu"])
            for name, viewport, scale in (("serve-desktop.png", {"width": 1280, "height": 900}, 1),
                                          ("serve-phone.png", {"width": 375, "height": 812}, 2)):
                page = browser.new_page(viewport=viewport, device_scale_factor=scale)
                page.goto(url)
                page.wait_for_selector("#test-accuracy")
                page.set_input_files("#file", args.images)
                page.wait_for_selector(f".result[data-state=done] >> nth={len(args.images) - 1}", timeout=120_000)
                if args.only_present and "phone" in name:
                    page.check("#only-present")
                page.screenshot(path=str(out / name), full_page=True)
                print(f"wrote {out / name}")
                page.close()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
