"""A real run's report.html in headless Chromium: opened from disk after the run folder was moved, the 3D
viewer loads the embedded GLB and draws it, the turntable plays, and the page makes no network request.

Chromium comes from Debian (``chromium``, ``chromium-driver``): installed with apt-get when missing
(CI runs as root); the test skips only where apt-get is unavailable. Playwright drives it through
``executable_path``; ``playwright install`` (a browser download) is never needed.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

from dreamengine.cli import main
from dreamengine.export.mesh_io import save_mesh
from dreamengine.report import write_report
from tests.cli_helpers import TINY

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         # WebGL without a GPU: ANGLE on SwiftShader (Chromium no longer falls back to it silently)
         "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
FRAMES, SIZE = 12, 32  # the turntable of the tiny run (the defaults are tested in test_report.py)


@pytest.fixture(scope="session")
def chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        pytest.skip("headless Chromium is not installed at /usr/bin/chromium and apt-get is not available to install "
                    "it; install the chromium and chromium-driver packages to run the browser tests")
    if os.geteuid() != 0:
        pytest.skip("headless Chromium is not installed and apt-get needs root: run "
                    "sudo apt-get install -y chromium chromium-driver")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with open(Path(tempfile.gettempdir()) / "dreamengine-chromium-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers: one installs, the others wait and find it
        if not CHROMIUM.exists():
            for command in (["apt-get", "update", "-qq"],
                            ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
                result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
                assert result.returncode == 0, (f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n"
                                                f"{result.stderr[-2000:]}")
    assert CHROMIUM.exists(), "apt-get installed chromium, but /usr/bin/chromium is missing"
    return CHROMIUM


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real ``dreamengine generate`` (in process, so the report hook runs as in a user's run), then the
    run folder moved elsewhere: the report must not depend on where it was written."""
    root = tmp_path_factory.mktemp("report-run")
    code = main(["generate", "a red cube", *TINY, "trainer.max_steps=6", "trainer.preview_every=3",
                 "trainer.log_every=1", "export.threshold=5.0", f"report.turntable_frames={FRAMES}",
                 f"report.turntable_size={SIZE}", f"output_dir={root / 'runs'}"])  # later overrides win
    assert code == 0
    (run_dir,) = (root / "runs").iterdir()
    return Path(shutil.move(str(run_dir), str(root / "elsewhere" / run_dir.name)))


def test_turntable_decodes_to_the_expected_frames(moved_run: Path):
    final = moved_run / "final"
    video = iio.imread(final / "turntable.mp4", index=None)
    assert video.shape == (FRAMES, SIZE, SIZE, 3)
    assert iio.imread(final / "turntable.gif", index=None).shape[:3] == (FRAMES, SIZE, SIZE)
    thumbnail = iio.imread(final / "thumbnail.png")  # frame 0, lossless
    assert np.abs(video[0].astype(float) - thumbnail).mean() < 4.0
    assert video.std() > 5.0  # the object is there, not a blank background


@pytest.fixture(scope="module")
def browser_context(chromium: Path):
    """A headless Chromium context that records every request and refuses any that would leave the machine."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' installs playwright")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.requests = []
        context.on("request", lambda request: context.requests.append(request.url))
        context.route(re.compile(r"^(?!file:|blob:|data:)"), lambda route: route.abort())
        try:
            yield context
        finally:
            browser.close()


def open_report(context, report: Path):
    """A page showing ``report`` once model-viewer says the model loaded; JavaScript errors are collected."""
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(report.as_uri())
    # loaded, or the page's error line (model-viewer's 'error' event, a missing script) says why not
    page.wait_for_function("document.querySelector('model-viewer').loaded === true || "
                           "document.getElementById('viewer-status').classList.contains('error')", timeout=30_000)
    assert page.evaluate("document.querySelector('model-viewer').loaded"), page.locator("#viewer-status").inner_text()
    page.wait_for_timeout(300)  # a few frames after load
    return page


def viewer_pixels(page) -> np.ndarray:
    """Screenshot of the viewer element, float RGB [H, W, 3]."""
    return iio.imread(page.locator("model-viewer").screenshot(), extension=".png")[..., :3].astype(float)


def test_report_opens_offline_from_disk(browser_context, moved_run: Path):
    page = open_report(browser_context, moved_run / "report.html")
    # the page's own 'load' listener hid the status line: model-viewer fired its load event
    assert page.locator("#viewer-status").is_hidden()
    assert page.locator("model-viewer").get_attribute("src").startswith("blob:")  # the embedded GLB
    shot = viewer_pixels(page)
    assert shot.std(axis=(0, 1)).mean() > 8.0, "the viewer area is blank"
    corner = shot[:8, :8].reshape(-1, 3).mean(0)  # the stage's color
    assert (np.abs(shot - corner).max(-1) > 40).mean() > 0.05, "the model covers almost nothing"

    page.wait_for_function("document.getElementById('turntable').readyState >= 2", timeout=10_000)
    assert page.evaluate("document.getElementById('turntable').videoWidth") == SIZE
    slider = page.locator("#preview-slider")
    slider.fill("0")
    slider.dispatch_event("input")
    assert page.locator("#preview-image").get_attribute("src") == "previews/step-000003.png"
    assert page.locator("svg.curve").count() >= 2
    assert not page.errors, page.errors
    page.close()

    requests = browser_context.requests
    outside = [url for url in requests if not url.startswith(("file:", "blob:", "data:"))]
    assert not outside, f"the report made network requests: {outside}"
    assert all(Path(url[len("file://"):]).is_relative_to(moved_run) for url in requests if url.startswith("file:"))


def test_viewer_starts_at_the_front_like_the_turntable(browser_context, tmp_path: Path):
    """A grey cube with a red cube at world +Y and a blue one at world +Z, seen from the front (+X, Z up):
    red shows on the right, blue on top. Pins the Z-up -> glTF Y-up export and the viewer's first camera."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text('{"prompt": "orientation check"}')
    parts = []
    for extent, center, color in ((0.6, (0, 0, 0), (128, 128, 128)), (0.3, (0, 0.6, 0), (255, 0, 0)),
                                  (0.2, (0, 0, 0.6), (0, 0, 255))):
        box = trimesh.creation.box(extents=(extent,) * 3)
        box.apply_translation(center)
        box.visual.vertex_colors = [*color, 255]
        parts.append(box)
    save_mesh(trimesh.util.concatenate(parts), run_dir / "final" / "model.glb")
    page = open_report(browser_context, write_report(run_dir))
    shot = viewer_pixels(page)
    page.close()

    def centroid(mask: np.ndarray) -> np.ndarray:
        assert mask.sum() > 50
        return np.argwhere(mask).mean(0)  # (row, column)

    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    red, blue = centroid((r > 150) & (g < 90) & (b < 90)), centroid((b > 150) & (r < 90) & (g < 90))
    height, width = r.shape
    assert abs(blue[1] - width / 2) < 0.1 * width, blue  # the top marker is centered: a straight front view
    assert red[1] > width / 2 + 0.1 * width, red  # +Y on the right, as in the turntable's first frame
    assert blue[0] < red[0] - 0.1 * height, (blue, red)  # +Z up
