"""Run reports without a browser: curves, turntable video, page assembly, batch index, CLI (see also
test_report_browser.py, which opens a real run's report in headless Chromium)."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh

from dreamengine.cli import main
from dreamengine.config import load_config
from dreamengine.core.cameras import Cameras, CameraSampler
from dreamengine.core.render import RenderOut
from dreamengine.errors import DreamEngineError
from dreamengine.report import (
    make_turntable,
    plots,
    report_after_training,
    turntable_settings,
    write_index,
    write_report,
)
from dreamengine.report.build import report_run
from dreamengine.report.page import config_name
from dreamengine.report.plots import ema, nice_ticks, panel_svg, read_log, series
from dreamengine.report.turntable import check_turntable_settings, render_frames, turntable_fps

# the plot area of a curve panel, in SVG units
LEFT, RIGHT = plots.MARGIN_LEFT, plots.WIDTH - plots.MARGIN_RIGHT
TOP, BOTTOM = plots.MARGIN_TOP, plots.HEIGHT - plots.MARGIN_BOTTOM


# ------------------------------------------------------------------------------------------ curves
def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.0, 1000.0) == [0.0, 250.0, 500.0, 750.0, 1000.0]
    assert nice_ticks(0.013, 0.087) == pytest.approx([0.02, 0.04, 0.06, 0.08])
    assert nice_ticks(-3.0, 3.0) == [-2.0, 0.0, 2.0]


def test_ema_follows_its_formula():
    values = [0.0, 10.0, 10.0, 10.0]
    alpha = 2.0 / (3.0 + 1.0)
    expected = [0.0]
    for value in values[1:]:
        expected.append(alpha * value + (1 - alpha) * expected[-1])
    assert ema(values, 3.0) == pytest.approx(expected)
    assert ema([5.0] * 7, 4.0) == pytest.approx([5.0] * 7)


def test_read_log_and_series_keep_finite_numbers_only(tmp_path: Path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 10, "loss": 2.0, "t_mean": 500}\n'
                   '{"step": 20, "loss": NaN, "warning": "non-finite loss", "skipped": 1.0}\n'
                   '{"step": 30, "loss": 1.0, "t_mean": 300, "flag": true}\n'
                   '{"step": 40, "loss": 0.')  # a run killed mid-write
    records = read_log(log)
    assert [r["step"] for r in records] == [10, 20, 30]
    curves = series(records)
    assert list(curves) == ["loss", "t_mean"]  # loss first; no warning, skipped or boolean panels
    assert curves["loss"] == ([10.0, 30.0], [2.0, 1.0])


def polyline_points(svg: str, css: str) -> np.ndarray:
    root = ET.fromstring(svg)
    line = next(e for e in root.iter() if e.tag.endswith("polyline") and e.get("class") == css)
    return np.array([[float(v) for v in p.split(",")] for p in line.get("points").split()])


def test_panel_maps_steps_and_values_onto_the_plot_area():
    steps, values = [0.0, 50.0, 100.0], [3.0, 1.0, 2.0]
    points = polyline_points(panel_svg("loss", steps, values), "raw")  # valid XML, or this raises
    assert points[:, 0] == pytest.approx([LEFT, (LEFT + RIGHT) / 2, RIGHT], abs=0.05)
    assert points[:, 1] == pytest.approx([TOP, BOTTOM, (TOP + BOTTOM) / 2], abs=0.05)  # max at top, min at bottom


def test_panel_switches_to_log_scale_over_two_decades():
    svg = panel_svg("loss", [1.0, 2.0, 3.0], [1.0, 100.0, 10000.0])
    assert "log scale" in svg
    points = polyline_points(svg, "raw")
    assert points[1, 1] == pytest.approx((TOP + BOTTOM) / 2, abs=0.05)  # 100: the log midpoint
    assert "log scale" not in panel_svg("loss", [1.0, 2.0], [1.0, 50.0])
    assert "log scale" not in panel_svg("loss", [1.0, 2.0], [-1.0, 1000.0])


# --------------------------------------------------------------------------------------- turntable
def azimuth_color(azimuth_deg: torch.Tensor) -> torch.Tensor:
    """A color that encodes the azimuth: ((1 + cos a) / 2, (1 + sin a) / 2, 0.5), [B, 3]."""
    a = torch.deg2rad(azimuth_deg)
    return torch.stack([(1 + torch.cos(a)) / 2, (1 + torch.sin(a)) / 2, torch.full_like(a, 0.5)], dim=-1)


def fake_render(calls: list[int]):
    """render(cameras, H, W): each view filled with its azimuth's color, its left half at half brightness."""
    def render(cameras: Cameras, height: int, width: int) -> RenderOut:
        calls.append(len(cameras))
        rgb = azimuth_color(cameras.azimuth).view(-1, 1, 1, 3).expand(-1, height, width, 3).clone()
        rgb[:, :, : width // 2] *= 0.5
        ones = torch.ones(len(cameras), height, width, 1)
        return RenderOut(rgb=rgb, opacity=ones, depth=ones, normal=None, orientation_loss=None)

    return render


def test_render_frames_in_chunks_in_orbit_order():
    calls: list[int] = []
    cameras = CameraSampler().orbit(10)
    frames = render_frames(fake_render(calls), cameras, 8, 8, chunk=4)
    assert calls == [4, 4, 2]
    assert frames.shape == (10, 8, 8, 3) and frames.dtype == np.uint8
    expected = (azimuth_color(cameras.azimuth).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(frames[:, 0, -1], expected)


def test_turntable_video_gif_and_thumbnail_decode_to_the_rendered_frames(tmp_path: Path):
    frames_n, size = 24, 32
    paths = make_turntable(fake_render([]), CameraSampler(), tmp_path / "final", frames_n, size)
    cameras = CameraSampler().orbit(frames_n, elevation_deg=15.0)
    expected = azimuth_color(cameras.azimuth).numpy() * 255  # right-half color of each frame, in orbit order

    video = iio.imread(paths["mp4"], index=None)  # decoded by ffmpeg
    assert video.shape == (frames_n, size, size, 3)
    right = video[:, 4:-4, size // 2 + 4:-4].reshape(frames_n, -1, 3).mean(1)
    left = video[:, 4:-4, 4:size // 2 - 4].reshape(frames_n, -1, 3).mean(1)
    assert np.abs(right - expected).max() < 6.0  # H.264 at quality 8 on flat colors
    assert np.abs(left - 0.5 * expected).max() < 6.0  # not mirrored

    gif = iio.imread(paths["gif"], index=None)
    assert gif.shape[:3] == (frames_n, size, size)
    assert np.abs(gif[:, 4:-4, size // 2 + 4:-4, :3].reshape(frames_n, -1, 3).mean(1) - expected).max() < 6.0
    thumbnail = iio.imread(paths["thumbnail"])
    assert np.abs(thumbnail[0, -1].astype(float) - expected[0]).max() <= 1.0  # the front view, lossless
    metadata = iio.immeta(paths["mp4"], plugin="FFMPEG")
    assert metadata["fps"] == pytest.approx(turntable_fps(frames_n)) and metadata["codec"] == "h264"


def test_turntable_settings():
    cfg = load_config("quickstart", prompt="a red cube")  # 48 px training renders
    assert turntable_settings(cfg, "cpu") == (36, 96)
    assert turntable_settings(cfg, "cuda") == (90, 96)
    cfg.camera.height = cfg.camera.width = 24
    assert turntable_settings(cfg, "cpu")[1] == 64
    cfg.camera.height = cfg.camera.width = 512
    assert turntable_settings(cfg, "cpu")[1] == 512
    cfg = load_config("quickstart", ["report.turntable_frames=8", "report.turntable_size=32"], prompt="a red cube")
    assert turntable_settings(cfg, "cuda") == (8, 32)
    with pytest.raises(DreamEngineError, match="report.turntable_size must be 0 .* multiple of 16"):
        load_config("quickstart", ["report.turntable_size=100"], prompt="a red cube")
    with pytest.raises(DreamEngineError, match="report.turntable_frames must be 0"):
        load_config("quickstart", ["report.turntable_frames=1"], prompt="a red cube")
    assert turntable_fps(36) == 12 and turntable_fps(90) == 30 and turntable_fps(4) == 6
    with pytest.raises(DreamEngineError, match="multiple of 16.*--size 96"):
        check_turntable_settings(36, 100)
    with pytest.raises(DreamEngineError, match="at least 2 frames"):
        check_turntable_settings(1, None)


# -------------------------------------------------------------------------------------------- page
class Links(HTMLParser):
    """Every src/href/poster attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "poster") and value]


def fake_run(run_dir: Path, prompt: str = "a red cube", glb: bool = True) -> Path:
    """A run directory with the files a finished toy run has (small stand-ins for the trained ones)."""
    cfg = load_config("quickstart", ["trainer.max_steps=20"], prompt=prompt)
    from dreamengine.runs import init_run_dir

    init_run_dir(run_dir, cfg, ["dreamengine", "generate", prompt, "--config", "quickstart"])
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 100.0 / s, "grad_norm": 1.0 + s})
                                                   + "\n" for s in range(5, 25, 5)))
    (run_dir / "previews").mkdir()
    for step in (10, 20):
        iio.imwrite(run_dir / "previews" / f"step-{step:06d}.png", np.full((8, 32, 3), step, np.uint8))
    (run_dir / "metrics.json").write_text(json.dumps({
        "prompt": prompt, "object": prompt, "views": 2, "resolution": 32, "mask_iou": 0.8125, "psnr": 17.5,
        "saturation": 0.5, "true_saturation": 0.75, "per_view": [
            {"azimuth": 7.5, "elevation": 20.0, "mask_iou": 0.8, "psnr": 17.0},
            {"azimuth": 187.5, "elevation": 20.0, "mask_iou": 0.825, "psnr": 18.0}],
        "mesh": {"file": "x/model.glb", "volumetric_iou": 0.625, "chamfer": 0.0375}}))
    if glb:
        (run_dir / "final").mkdir()
        (run_dir / "final" / "model.glb").write_bytes(trimesh.creation.box().export(file_type="glb"))
    return run_dir


def test_report_embeds_the_glb_and_links_only_files_inside_the_run(tmp_path: Path):
    run_dir = fake_run(tmp_path / "run")
    make_turntable(fake_render([]), CameraSampler(), run_dir / "final", 4, 16)
    page = write_report(run_dir)
    text = page.read_text()

    start = text.index('id="glb-data">') + len('id="glb-data">')
    embedded = base64.b64decode(text[start:text.index("</script>", start)])
    assert embedded == (run_dir / "final" / "model.glb").read_bytes()

    links = Links()
    links.feed(text)
    assert "report_files/model-viewer.min.js" in links.urls
    assert {"previews/step-000020.png", "final/turntable.mp4", "final/thumbnail.png"} <= set(links.urls)
    for link in links.urls:  # relative and present: the page survives copying the folder
        assert "://" not in link and not link.startswith("/"), link
        assert (run_dir / link).is_file(), link
    bundled = Path(__file__).resolve().parents[2] / "dreamengine" / "report" / "assets" / "model-viewer.min.js"
    assert (run_dir / "report_files" / "model-viewer.min.js").read_bytes() == bundled.read_bytes()
    assert (run_dir / "report_files" / "model-viewer.LICENSE").is_file()

    for expected in ("a red cube", "quickstart", "SDS · NeRF · toyworld-multiview teacher", "0.8125", "17.5",
                     "ground truth 0.75", "0.625", "0.0375", "Resolved config", "step 20", "20 / 20"):
        assert expected in text, expected
    assert text.count('class="curve"') == 2  # loss and grad_norm panels


def test_report_of_a_partial_run_says_what_is_missing(tmp_path: Path):
    run_dir = fake_run(tmp_path / "run", prompt="a <b>bold</b> cube", glb=False)
    for name in ("metrics.json", "metrics.jsonl"):
        (run_dir / name).unlink()
    text = write_report(run_dir).read_text()
    assert "No exported model" in text and "No turntable yet" in text and "No evaluation" in text
    assert "a &lt;b&gt;bold&lt;/b&gt; cube" in text and "<b>bold</b>" not in text
    assert "<model-viewer" not in text and not (run_dir / "report_files").exists()


def test_report_rejects_a_folder_that_is_not_a_run(tmp_path: Path):
    with pytest.raises(DreamEngineError, match="not a DreamEngine run directory"):
        write_report(tmp_path)


def test_config_name_from_the_recorded_command():
    assert config_name(["dreamengine", "generate", "a cat"]) == "quickstart"
    assert config_name(["dreamengine", "generate", "a cat", "--config", "bsd-toy", "seed=1"]) == "bsd-toy"
    assert config_name(["dreamengine", "generate", "a cat", "-c", "/home/me/my.yaml"]) == "my.yaml"
    assert config_name(["dreamengine", "generate", "a cat", "--config=ism-toy"]) == "ism-toy"


# ------------------------------------------------------------------------------------------- index
def test_index_links_reports_and_thumbnails_relatively(tmp_path: Path):
    first = fake_run(tmp_path / "runs" / "first", prompt="a red cube")
    make_turntable(fake_render([]), CameraSampler(), first / "final", 4, 16)
    write_report(first)
    second = fake_run(tmp_path / "runs" / "second", prompt="a blue torus", glb=False)  # no report, no turntable
    batch = tmp_path / "batches" / "b1"
    text = write_index(batch, [first, second]).read_text()
    links = Links()
    links.feed(text)
    assert links.urls == ["../../runs/first/report.html", "../../runs/first/final/thumbnail.png",
                          "../../runs/second/previews/step-000020.png"]
    for link in links.urls:
        assert (batch / link).resolve().is_file()
    assert text.index("a red cube") < text.index("a blue torus")
    assert "mask IoU 0.8125 · PSNR 17.5 · mesh IoU 0.625" in text
    assert "no report yet: dreamengine report ../../runs/second" in text
    with pytest.raises(DreamEngineError, match="do not exist"):
        write_index(batch, [tmp_path / "nope"])


# --------------------------------------------------------------------------------------------- CLI
def test_report_cli_help_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    out = capsys.readouterr().out
    assert "RUN_DIR" in out and "--frames" in out and "--no-turntable" in out and "offline" in out
    assert main(["report", str(tmp_path), "--size", "100"]) == 2
    assert "multiple of 16" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing"), "--no-turntable"]) == 2
    assert "missing does not exist" in " ".join(capsys.readouterr().err.split())
    assert main(["report", str(tmp_path), "--no-turntable"]) == 2
    assert "is not a DreamEngine run directory" in " ".join(capsys.readouterr().err.split())

    run_dir = fake_run(tmp_path / "run")
    assert main(["report", str(run_dir), "--no-turntable"]) == 0
    assert (run_dir / "report.html").is_file()
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0  # no checkpoint: the page alone, and a note why
    assert "no checkpoint" in capsys.readouterr().err and (run_dir / "report.html").is_file()


def test_a_failing_report_warns_and_keeps_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run_dir = fake_run(tmp_path / "run")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    class BrokenTrainer:
        cfg = load_config("quickstart", prompt="a red cube")
        device = torch.device("cpu")

        def __init__(self) -> None:
            self.run_dir = run_dir

        def render_views(self, cameras: Cameras, height: int, width: int) -> RenderOut:
            raise RuntimeError("out of memory")

    broken = BrokenTrainer()
    assert report_after_training(broken.run_dir, broken.cfg, broken.render_views, broken.device) is None
    err = capsys.readouterr().err
    assert "warning: the run report was not written (RuntimeError: out of memory)" in err
    assert f"dreamengine report {run_dir}" in err
    assert all(path.read_bytes() == data for path, data in before.items())

    no_turntable = load_config("quickstart", ["report.turntable=false"], prompt="a red cube")
    page = report_after_training(run_dir, no_turntable, broken.render_views, broken.device)
    assert page == run_dir / "report.html"  # the page, without rendering
    assert "No turntable yet" in (run_dir / "report.html").read_text()


def test_report_run_renders_the_turntable_with_the_given_callback(tmp_path: Path):
    run_dir = fake_run(tmp_path / "run")
    calls: list[int] = []
    cfg = load_config("quickstart", prompt="a red cube")
    report_run(run_dir, cfg, fake_render(calls), "cpu", frames=6, size=16)
    assert sum(calls) == 6
    assert iio.imread(run_dir / "final" / "turntable.mp4", index=None).shape == (6, 16, 16, 3)
    assert len(iio.imread(run_dir / "final" / "turntable.gif", index=None)) == 6
