"""``dreamengine ui`` in headless Chromium: a short toy run started from the page shows its progress and a
preview, stops (checkpointed), resumes, and ends with the model loaded in the 3D viewer; files outside the runs
folder are refused, whatever path the browser names.

Chromium and Playwright as in tests/report/test_report_browser.py (Debian's /usr/bin/chromium).
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from tests.cli_helpers import TINY, cli_env
from tests.report.test_report_browser import FLAGS, chromium  # noqa: F401 - the session fixture

pytest.importorskip("gradio", reason="pip install 'dreamengine[ui]' installs gradio")

# a toy run long enough to be stopped mid-way on a fast machine; a cheap export so the end comes quickly
SETTINGS = [*(s for s in TINY if not s.startswith(("trainer.preview_every", "report.", "eval.", "export.resolution"))),
            "trainer.log_every=1", "export.appearance=vertex_colors", "export.resolution=32", "eval.num_views=2",
            "eval.resolution=16", "eval.elevations=[20]", "eval.overhead=false", "report.turntable_frames=4",
            "report.turntable_size=16"]
MAX_STEPS, PREVIEW_EVERY = 60, 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """The app on 127.0.0.1:PORT over ``root/runs``, with a secret file next to the runs folder."""
    from dreamengine.ui.app import launch
    from dreamengine.ui.jobs import JobQueue

    root = tmp_path_factory.mktemp("ui")
    (root / "secret.txt").write_text("not for the browser")
    runs = root / "runs"
    runs.mkdir()
    env = cli_env(root)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    port = free_port()
    app, jobs = launch(runs, port=port, block=False, queue=JobQueue(runs, env=env))
    try:
        yield f"http://127.0.0.1:{port}", runs, jobs
    finally:
        jobs.close()
        app.close()


def status(page) -> dict[str, str]:
    return page.eval_on_selector("#run-status", "e => ({state: e.dataset.state, step: e.dataset.step || '0'})")


@pytest.mark.slow
def test_start_watch_stop_resume_and_view_the_model(served, chromium: Path):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' installs playwright")
    url, runs, jobs = served
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            served_files: list[tuple[str, int]] = []
            page.on("response", lambda r: served_files.append((r.url, r.status)) if "file=" in r.url else None)
            page.goto(url)
            page.locator("#prompt textarea").fill("a red cube")
            page.locator("#max-steps input").fill(str(MAX_STEPS))
            page.locator("#preview-every input").fill(str(PREVIEW_EVERY))
            page.locator("#extra textarea").fill(" ".join(SETTINGS))
            page.locator("#start").click()

            # progress and a preview while it runs
            page.wait_for_function(f"(() => {{ const s = document.querySelector('#run-status'); return s && "
                                   f"s.dataset.state === 'running' && +s.dataset.step >= {PREVIEW_EVERY}; }})()",
                                   timeout=45_000)
            page.wait_for_selector("#preview img", timeout=10_000)
            assert "ETA" in page.inner_text("#run-status") or "exporting" in page.inner_text("#run-status")
            page.locator("#stop").click()
            page.wait_for_function("document.querySelector('#run-status').dataset.state === 'stopped'",
                                   timeout=30_000)
            (run_dir,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
            assert (run_dir / "ckpt" / "last.pt").is_file()
            stopped_at = int(status(page)["step"])
            assert PREVIEW_EVERY <= stopped_at < MAX_STEPS
            assert not (run_dir / "final" / "model.glb").exists()

            page.locator("#resume").click()
            page.wait_for_function("document.querySelector('#run-status').dataset.state === 'done'", timeout=90_000)
            assert int(status(page)["step"]) == MAX_STEPS
            page.wait_for_selector("#model canvas", timeout=20_000)  # the 3D viewer has the GLB
            deadline = time.monotonic() + 20
            while not any(u.endswith("model.glb") and code == 200 for u, code in served_files):
                assert time.monotonic() < deadline, served_files
                page.wait_for_timeout(250)
            assert [row[-1] for row in jobs.table()] == ["stopped", "done"]  # the queue: two jobs, one run
            log = (run_dir / "metrics.jsonl").read_text().splitlines()
            assert [int(re.search(r'"step": (\d+)', line)[1]) for line in log] == list(range(1, MAX_STEPS + 1))

            # path traversal: the file route serves the runs folder only
            secret = runs.parent / "secret.txt"
            for path in (str(secret), f"{runs}/../secret.txt", f"{run_dir}/../../secret.txt", "/etc/passwd",
                         f"{runs}/.ui/jobs/job-0001.json"):
                response = page.request.get(f"{url}/gradio_api/file={path}")
                assert response.status in (403, 404), (path, response.status)
                assert b"not for the browser" not in response.body()
            response = page.request.get(f"{url}/gradio_api/file={run_dir}/final/model.glb")
            assert response.status == 200 and response.body()[:4] == b"glTF"
        finally:
            browser.close()


def test_the_runs_tab_opens_runs_by_name_only(served, tmp_path: Path):
    """The API behind the Runs tab refuses any name that is not a run folder inside the runs folder."""
    from gradio_client import Client

    url, runs, _ = served
    outside = tmp_path / "outside"
    (outside / "final").mkdir(parents=True)
    (runs / "escape").symlink_to(outside)
    client = Client(url, verbose=False)
    for name in ("../", "..", "/etc", str(outside), "escape", "."):
        with pytest.raises(Exception, match=r"(?i)not a run folder|not in the list|choices|error"):
            client.predict(name, api_name="/open_run")
