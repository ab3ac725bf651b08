"""``dreamengine ui``: a Gradio page to start, watch, stop and resume runs, and browse the runs folder.

Every generation runs in its own worker process (:mod:`dreamengine.ui.jobs`), one at a time, in a queue the page
shows. The page polls the running job's ``RUN_DIR/ui/progress.json`` and ``metrics.jsonl`` once a second: a
progress bar with the ETA, the latest preview grid, the loss curves; at the end the GLB in a 3D viewer, the
turntable, the metrics and the files to download. The browser names runs only by their folder name; every path
is resolved on the server and refused unless it lies inside the runs folder, and Gradio is told to serve files
from the runs folder only (``allowed_paths``).
"""

from __future__ import annotations

import html
import json
import shlex
import time
from pathlib import Path
from typing import Any

from dreamengine.config.loading import available_configs
from dreamengine.errors import DreamEngineError
from dreamengine.systems import packaged_systems
from dreamengine.ui.jobs import Job, JobQueue
from dreamengine.ui.worker import progress_path

POLL_SECONDS = 1.0
DOWNLOADS = ("final/model.glb", "final/scene.ply", "final/model.obj", "final/model.ply", "final/turntable.mp4",
             "report.html", "metrics.json", "config.yaml")


def gradio() -> Any:
    try:
        import gradio as gr
    except ImportError:
        raise DreamEngineError("the web UI needs Gradio: pip install 'dreamengine[ui]'") from None
    return gr


# ------------------------------------------------------------------------------------------ what the page shows
def settings_overrides(max_steps: Any, seed: Any, resolution: Any, batch_size: Any, guidance_scale: Any,
                       preview_every: Any, extra: str) -> list[str]:
    """The page's settings as ``key=value`` overrides (empty fields keep the config's value), then ``extra``."""
    overrides = []
    for key, value in (("trainer.max_steps", max_steps), ("seed", seed), ("camera.height", resolution),
                       ("camera.width", resolution), ("camera.batch_size", batch_size),
                       ("guidance.guidance_scale", guidance_scale), ("trainer.preview_every", preview_every)):
        if value is not None and value != "":
            number = float(value)
            whole = number.is_integer() and key != "guidance.guidance_scale"
            overrides.append(f"{key}={int(number) if whole else number}")
    try:
        words = shlex.split(extra or "")
    except ValueError as error:
        raise DreamEngineError(f"cannot read the extra settings ({error}); write them as key=value key=value") from None
    bad = [w for w in words if "=" not in w]
    if bad:
        raise DreamEngineError(f"extra settings must be key=value, got {' '.join(bad)}")
    return overrides + words


def config_values(name: str) -> list[Any]:
    """The settings the page shows, as the config ``name`` sets them (None where it has no such key)."""
    from dreamengine.config import load_config

    try:
        cfg = load_config(name)
    except DreamEngineError:
        return [None] * 6
    return [cfg.trainer.max_steps, cfg.seed, cfg.camera.height, cfg.camera.batch_size,
            getattr(cfg.guidance, "guidance_scale", None), cfg.trainer.preview_every]


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    path = progress_path(run_dir)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "estimating..."
    seconds = int(round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def progress_html(job: Job | None, progress: dict[str, Any] | None) -> str:
    """A progress bar, the step, ETA and loss, and the job's state (data-state for tests and scripts)."""
    if job is None:
        return '<div id="run-status" data-state="idle">No run yet: type a prompt and press Start.</div>'
    state = job.state if job.state != "running" or progress is None else progress.get("state", "running")
    step = progress.get("step", 0) if progress else 0
    total = progress.get("max_steps", 0) if progress else 0
    stage = ""
    if progress and progress.get("stage_count", 1) > 1:
        stage = f"stage {progress['stage_index'] + 1}/{progress['stage_count']} ({progress['stage']}) · "
    loss = (progress or {}).get("terms", {}).get("loss")
    eta = format_seconds(progress.get("eta_seconds")) if progress and state == "running" else ""
    text = (f"{stage}step {step}/{total}" + (f" · ETA {eta}" if eta else "")
            + (f" · loss {loss:.4g}" if isinstance(loss, (int, float)) else "") + f" · {state}")
    if job.state == "running" and state == "done":
        text = f"step {step}/{total} · exporting and evaluating..."
    return (f'<div id="run-status" data-state="{html.escape(job.state)}" data-step="{step}" '
            f'data-run="{html.escape(job.run_dir.name)}"><progress max="{max(total, 1)}" value="{step}" '
            f'style="width:100%"></progress><div>{html.escape(job.run_dir.name)}: {html.escape(text)}</div></div>')


def loss_table(run_dir: Path, progress: dict[str, Any] | None) -> Any:
    """The logged loss terms of the current stage as a long table (step, value, term) for a line plot."""
    import pandas as pd

    log = run_dir / (progress or {}).get("log", "metrics.jsonl")
    rows = []
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            for key, value in record.items():
                if key != "step" and "loss" in key and isinstance(value, (int, float)):
                    rows.append({"step": record["step"], "value": float(value), "term": key})
    return pd.DataFrame(rows, columns=["step", "value", "term"])


def latest_preview(run_dir: Path, progress: dict[str, Any] | None) -> str | None:
    if progress and progress.get("preview"):
        path = run_dir / progress["preview"]
        if path.is_file():
            return str(path)
    previews = sorted(run_dir.rglob("previews/step-*.png"))
    return str(previews[-1]) if previews else None


def run_outputs(run_dir: Path) -> tuple[str | None, str | None, dict[str, Any] | None, list[str]]:
    """A finished (or stopped) run's GLB, turntable, metrics and downloadable files."""
    glb = run_dir / "final" / "model.glb"
    video = run_dir / "final" / "turntable.mp4"
    metrics_path = run_dir / "metrics.json"
    metrics = None
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except json.JSONDecodeError:
            metrics = None
    files = [str(run_dir / name) for name in DOWNLOADS if (run_dir / name).is_file()]
    return (str(glb) if glb.is_file() else None, str(video) if video.is_file() else None, metrics, files)


def list_runs(runs_dir: Path) -> list[str]:
    """Run folders (single runs and systems) under ``runs_dir``, newest first."""
    if not runs_dir.is_dir():
        return []
    runs = [p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
            and ((p / "config.yaml").is_file() or (p / "system.yaml").is_file())]
    return [p.name for p in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)]


# ------------------------------------------------------------------------------------------------- the page
def build_app(runs_dir: str | Path = "runs", queue: JobQueue | None = None) -> tuple[Any, JobQueue]:
    """The Gradio Blocks app and its job queue (``launch`` starts both; tests build it directly)."""
    gr = gradio()
    runs_dir = Path(runs_dir).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    jobs = queue if queue is not None else JobQueue(runs_dir)
    configs = available_configs()
    systems = sorted(packaged_systems())

    def start(prompt: str, kind: str, config: str, system: str, max_steps: Any, seed: Any, resolution: Any,
              batch_size: Any, guidance_scale: Any, preview_every: Any, extra: str) -> str:
        try:
            if kind == "system":  # a system's stages keep their own settings; only the extra ones apply
                max_steps = seed = resolution = batch_size = guidance_scale = preview_every = None
            overrides = settings_overrides(max_steps, seed, resolution, batch_size, guidance_scale, preview_every,
                                           extra)
            job = jobs.submit_generate(prompt, config if kind == "config" else None,
                                       system if kind == "system" else None, overrides)
        except DreamEngineError as error:
            raise gr.Error(str(error)) from None
        return f"queued job {job.id}: {job.run_dir.name}"

    def stop() -> str:
        job = jobs.stop()
        return "nothing is running" if job is None else f"stopping job {job.id} (saving a checkpoint)..."

    def resume_latest() -> str:
        job = jobs.latest()
        if job is None or job.state not in ("stopped", "failed", "cancelled"):
            raise gr.Error("no stopped run to resume (stop a run first, or resume one from the Runs tab)")
        try:
            new = jobs.submit_resume(job.run_dir)
        except DreamEngineError as error:
            raise gr.Error(str(error)) from None
        return f"queued job {new.id}: resume {new.run_dir.name}"

    def poll(shown: dict[str, Any]) -> tuple[Any, ...]:
        job = jobs.running() or jobs.latest()
        progress = read_progress(job.run_dir) if job is not None else None
        status = progress_html(job, progress)
        if job is not None and job.state == "failed":
            status += f"<pre id='run-error'>{html.escape(jobs.error_text(job))}</pre>"
        preview = latest_preview(job.run_dir, progress) if job is not None else None
        losses = loss_table(job.run_dir, progress) if job is not None else None
        glb = video = metrics = None
        files: list[str] = []
        if job is not None and job.state in ("done", "stopped"):
            glb, video, metrics, files = run_outputs(job.run_dir)
        new = {"preview": preview, "glb": glb, "video": video, "files": files, "metrics": metrics,
               "rows": len(losses) if losses is not None else 0, "status": status, "queue": jobs.table()}
        out = [status if status != shown.get("status") else gr.skip(),
               preview if preview != shown.get("preview") else gr.skip(),
               losses if new["rows"] != shown.get("rows") else gr.skip(),
               glb if glb != shown.get("glb") else gr.skip(),
               video if video != shown.get("video") else gr.skip(),
               metrics if metrics != shown.get("metrics") else gr.skip(),
               files if files != shown.get("files") else gr.skip(),
               new["queue"] if new["queue"] != shown.get("queue") else gr.skip()]
        return (*out, new)

    def open_past(name: str) -> tuple[Any, ...]:
        try:
            run_dir = jobs.inside(name)
        except DreamEngineError as error:
            raise gr.Error(str(error)) from None
        glb, video, metrics, files = run_outputs(run_dir)
        report = run_dir / "report.html"
        link = (f'<a id="report-link" href="/gradio_api/file={html.escape(str(report))}" target="_blank">'
                f"open {html.escape(name)}/report.html</a>" if report.is_file() else "no report.html (yet)")
        return glb, video, metrics, files, latest_preview(run_dir, None), link

    def resume_past(name: str) -> str:
        try:
            job = jobs.submit_resume(jobs.inside(name))
        except DreamEngineError as error:
            raise gr.Error(str(error)) from None
        return f"queued job {job.id}: resume {job.run_dir.name}"

    with gr.Blocks(title="DreamEngine") as app:
        gr.Markdown("# DreamEngine\nText prompt → 3D asset by score distillation. Runs are saved in "
                    f"`{runs_dir}`; one run at a time, the rest wait in the queue.")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    prompt = gr.Textbox(label="Prompt", placeholder="a red cube", elem_id="prompt")
                    kind = gr.Radio(["config", "system"], value="config", label="Run a config or a system")
                    config = gr.Dropdown(configs, value="quickstart", label="Config", elem_id="config")
                    system = gr.Dropdown(systems, value=systems[0] if systems else None, label="System",
                                         visible=False)
                    values = config_values("quickstart")
                    with gr.Accordion("Settings (the config's values)", open=True) as settings_box:
                        max_steps = gr.Number(values[0], label="trainer.max_steps", precision=0, elem_id="max-steps")
                        seed = gr.Number(values[1], label="seed", precision=0)
                        resolution = gr.Number(values[2], label="camera.height = camera.width", precision=0)
                        batch_size = gr.Number(values[3], label="camera.batch_size", precision=0)
                        guidance_scale = gr.Number(values[4], label="guidance.guidance_scale")
                        preview_every = gr.Number(values[5], label="trainer.preview_every (0: none)", precision=0,
                                                  elem_id="preview-every")
                    extra = gr.Textbox(label="More settings: key=value ... (systems: STAGE:key=value for one stage)",
                                       elem_id="extra")
                    with gr.Row():
                        start_button = gr.Button("Start", variant="primary", elem_id="start")
                        stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                        resume_button = gr.Button("Resume", elem_id="resume")
                    message = gr.Markdown(elem_id="message")
                with gr.Column(scale=2):
                    status = gr.HTML(progress_html(None, None), elem_id="status")
                    with gr.Row():
                        preview = gr.Image(label="Preview (rgb and opacity)", elem_id="preview", interactive=False)
                        losses = gr.LinePlot(x="step", y="value", color="term", label="Losses", elem_id="losses")
                    with gr.Row():
                        model = gr.Model3D(label="Model (GLB)", elem_id="model")
                        video = gr.Video(label="Turntable", elem_id="turntable", interactive=False)
                    metrics = gr.JSON(label="Metrics", elem_id="metrics")
                    downloads = gr.File(label="Downloads", file_count="multiple", elem_id="downloads",
                                        interactive=False)
                    queue_table = gr.Dataframe(headers=["job", "action", "prompt", "run", "state"], label="Queue",
                                               interactive=False, elem_id="queue")
        with gr.Tab("Runs"):
            with gr.Row():
                run_choice = gr.Dropdown(list_runs(runs_dir), label="Run", elem_id="run-choice")
                refresh = gr.Button("Refresh")
                open_button = gr.Button("Open", elem_id="open-run")
                resume_run = gr.Button("Resume this run")
            report_link = gr.HTML()
            with gr.Row():
                past_model = gr.Model3D(label="Model", elem_id="past-model")
                past_video = gr.Video(label="Turntable", interactive=False)
                past_preview = gr.Image(label="Last preview", interactive=False)
            past_metrics = gr.JSON(label="Metrics")
            past_files = gr.File(label="Downloads", file_count="multiple", interactive=False)
        shown = gr.State({})
        timer = gr.Timer(POLL_SECONDS)

        numbers = [max_steps, seed, resolution, batch_size, guidance_scale, preview_every]
        config.change(config_values, config, numbers, api_name=False)
        kind.change(lambda k: (gr.Dropdown(visible=k == "config"), gr.Dropdown(visible=k == "system"),
                               gr.Accordion(visible=k == "config")), kind, [config, system, settings_box],
                    api_name=False)
        settings = [prompt, kind, config, system, max_steps, seed, resolution, batch_size, guidance_scale,
                    preview_every, extra]
        start_button.click(start, settings, message, api_name="start")
        stop_button.click(stop, None, message, api_name="stop")
        resume_button.click(resume_latest, None, message, api_name="resume")
        timer.tick(poll, shown, [status, preview, losses, model, video, metrics, downloads, queue_table, shown],
                   show_progress="hidden", api_name=False)
        refresh.click(lambda: gr.Dropdown(choices=list_runs(runs_dir)), None, run_choice, api_name=False)
        open_button.click(open_past, run_choice,
                          [past_model, past_video, past_metrics, past_files, past_preview, report_link],
                          api_name="open_run")
        resume_run.click(resume_past, run_choice, message, api_name="resume_run")
    return app, jobs


def launch(runs_dir: str | Path = "runs", host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           block: bool = True, queue: JobQueue | None = None) -> tuple[Any, JobQueue]:
    """Serve the page on ``host:port`` (127.0.0.1 unless told otherwise), serving files from ``runs_dir`` only.

    With ``block`` it serves until Ctrl-C, then stops the running job (which saves a checkpoint) and returns."""
    app, jobs = build_app(runs_dir, queue)
    runs = Path(runs_dir).resolve()
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=host, server_port=port, share=share, allowed_paths=[str(runs)],
               blocked_paths=[str(runs / ".ui")], prevent_thread_lock=True, show_error=True, quiet=not block)
    if block:
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            print("stopping: the running job saves a checkpoint (resume it from the Runs tab)", flush=True)
        finally:
            jobs.close()
            app.close()
    return app, jobs
