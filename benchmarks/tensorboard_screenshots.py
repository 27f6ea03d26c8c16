"""What a user sees in TensorBoard at its defaults, checked in a real headless browser.

Starts TensorBoard (this interpreter's `tensorboard.main`) on 127.0.0.1 on a free port over a
logdir the project wrote (a study's `arms/` folder, a bundle's `logs/` or `eval/tensorboard`), waits
until it has loaded the runs, then loads each dashboard in headless Chromium at TensorBoard's
default settings (no smoothing or other URL overrides) and saves one screenshot per dashboard:

    python benchmarks/tensorboard_screenshots.py --logdir runs/demo/arms
    # -> docs/images/tensorboard_scalars.png, tensorboard_images.png, tensorboard_text.png, ...

Chromium: Debian's `apt-get install chromium` (or `--chromium /path/to/chrome`). Nothing is
fetched from outside 127.0.0.1 (background networking, sync, component updates and QUIC are off).
Exits non-zero when TensorBoard does not come up, lists no run, a dashboard it has data for is
missing, or a screenshot is missing or blank.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

# dashboard (URL fragment) -> the plugin whose data it shows
DASHBOARDS = {"timeseries": "scalars", "scalars": "scalars", "images": "images", "text": "text",
              "custom_scalars": "custom_scalars"}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:  # 127.0.0.1 only
        return json.loads(response.read().decode())


def find_chromium(explicit: str | None) -> str:
    for name in ([explicit] if explicit else CHROMIUM_NAMES):
        path = shutil.which(name) if name else None
        if path:
            return path
    sys.exit("tensorboard_screenshots: no Chromium found (tried " + ", ".join([explicit] if explicit else CHROMIUM_NAMES)
             + "); install it (Debian: apt-get install chromium) or pass --chromium PATH")


def start_tensorboard(logdir: Path, port: int, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
               "--port", str(port), "--reload_interval", "1"]
    log = open(log_path, "w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def wait_for_runs(base: str, process: subprocess.Popen, timeout: float) -> tuple[list, dict]:
    """Runs and active plugins once TensorBoard serves them (it loads event files in the background)."""
    deadline = time.monotonic() + timeout
    runs, plugins = [], {}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"TensorBoard exited with code {process.returncode}")
        try:
            runs = get_json(f"{base}/data/runs")
            plugins = get_json(f"{base}/data/plugins_listing")
            if runs:
                time.sleep(2.0)  # let the first reload finish for every run, not only the first
                return get_json(f"{base}/data/runs"), get_json(f"{base}/data/plugins_listing")
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"TensorBoard at {base} listed no run within {timeout:.0f} s")


def screenshot(chromium: str, url: str, png: Path, width: int, height: int, budget_ms: int, timeout: float) -> float:
    profile = tempfile.mkdtemp(prefix="tb_chromium_")
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={png}", url]
    start = time.perf_counter()
    try:
        subprocess.run(command, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return time.perf_counter() - start


def distinct_colours(png: Path) -> int:
    """How many colours the screenshot has: a page that did not render is one or two flat colours."""
    from PIL import Image

    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(colours) if colours is not None else 1 << 20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", required=True, type=Path, help="a folder with TensorBoard event files")
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="where the PNGs go")
    parser.add_argument("--prefix", default="tensorboard_", help="file name prefix of the PNGs")
    parser.add_argument("--dashboards", nargs="+", default=["scalars", "images", "text", "custom_scalars"],
                        choices=sorted(DASHBOARDS), help="TensorBoard dashboards to capture")
    parser.add_argument("--tag-filter", default="", help="a tag regex typed into the dashboards' filter box "
                        "(the only URL setting used; smoothing and the rest stay at TensorBoard's defaults)")
    parser.add_argument("--chromium", default=None, help="the browser binary (default: chromium on PATH)")
    parser.add_argument("--size", nargs=2, type=int, default=[1400, 900], metavar=("W", "H"))
    parser.add_argument("--budget-ms", type=int, default=15000, help="Chromium's virtual time budget per page")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for TensorBoard and for each page")
    args = parser.parse_args(argv)

    if not args.logdir.is_dir() or not any(args.logdir.rglob("events.out.tfevents.*")):
        sys.exit(f"tensorboard_screenshots: --logdir {args.logdir} has no TensorBoard event files "
                 "(events.out.tfevents.*); pass a study's arms/ folder or a bundle's logs/ or eval/tensorboard")
    chromium = find_chromium(args.chromium)
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="tb_screens_"))
    process = start_tensorboard(args.logdir, port, work / "tensorboard.log")
    failures = []
    try:
        runs, plugins = wait_for_runs(base, process, args.timeout)
        active = sorted(name for name, info in plugins.items() if info.get("enabled"))
        print(f"TensorBoard {base} over {args.logdir}: {len(runs)} runs; active plugins: {', '.join(active)}")
        for dashboard in args.dashboards:
            if not plugins.get(DASHBOARDS[dashboard], {}).get("enabled"):
                print(f"  {dashboard}: no data in this logdir (plugin {DASHBOARDS[dashboard]} inactive), skipped")
                continue
            png = args.out / f"{args.prefix}{dashboard}.png"
            if png.exists():
                png.unlink()
            fragment = dashboard + (f"&tagFilter={urllib.parse.quote(args.tag_filter)}" if args.tag_filter else "")
            seconds = screenshot(chromium, f"{base}/#{fragment}", png, *args.size, args.budget_ms, args.timeout)
            colours = distinct_colours(png) if png.is_file() else 0
            status = "ok" if colours > 16 else "BLANK OR MISSING"
            if status != "ok":
                failures.append(dashboard)
            print(f"  {dashboard}: {png} ({colours} colours, {seconds:.1f} s) {status}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    if failures:
        print(f"tensorboard_screenshots: no usable screenshot for {', '.join(failures)}; "
              f"TensorBoard's log: {work / 'tensorboard.log'}", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
