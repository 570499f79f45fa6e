"""Screenshot of the web view for the README (docs/web-view.png).

Starts local MJPEG "cameras" that cycle through the test images of a dataset category
(defects included), runs `anomaly-edge run` on them with ``--web``, opens the page in
headless Chromium and saves a PNG once events with snapshots are listed::

    python tools/web_screenshot.py --model runs/plate/model.xml \\
        --images ../shared/datasets/mpdd/metal_plate/test --out docs/web-view.png
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument(
        "--images",
        type=Path,
        required=True,
        help="folder searched for images (e.g. a category's test folder)",
    )
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "web-view.png")
    parser.add_argument("--size", default="1100x860", help="browser window WxH")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tools"))
    __import__("checkout").use_package()  # the built checkout, else the installed package
    from tests.browser import Chromium
    from tests.stream_media import MjpegServer

    paths = sorted(p for p in args.images.rglob("*.png") if "mask" not in p.name)
    if not paths:
        raise SystemExit(f"no .png images under {args.images}")
    images = [cv2.resize(cv2.imread(str(p)), (256, 256)) for p in paths[::3]]
    servers = [
        MjpegServer(lambda n, k=k: images[(n // 4 + 7 * k) % len(images)], fps=8).start()
        for k in range(args.cameras)
    ]
    package = str(__import__("checkout").package_path())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package, str(REPO)]))
    command = [
        sys.executable,
        "-m",
        "anomaly_edge",
        "run",
        "--model",
        str(args.model),
        "--device",
        "CPU",
        "--task",
        "detection",
        "--web",
        "127.0.0.1:0",
        "--quiet",
    ]
    for k, server in enumerate(servers):
        command += ["--source", f"station{k + 1}={server.url}"]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    browser = None
    try:
        url = None
        assert process.stderr is not None
        for line in process.stderr:
            match = re.search(r"web view: (\S+)", line)
            if match:
                url = match.group(1)
                break
        if url is None:
            raise SystemExit("the run did not start its web view")
        width, height = (int(v) for v in args.size.split("x"))
        browser = Chromium(url, size=(width, height))
        browser.wait_for(
            f"document.querySelectorAll('#events img').length >= "
            f"{min(3, args.cameras)} && [...document.querySelectorAll('#events img')]"
            ".every(i => i.naturalWidth > 0)",
            limit_s=90,
            what="snapshots",
        )
        time.sleep(2)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        browser.screenshot(args.out)
        # Chromium's PNGs are loosely compressed; the README's copy need not be.
        cv2.imwrite(str(args.out), cv2.imread(str(args.out)), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    finally:
        if browser is not None:
            browser.close()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        for server in servers:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
