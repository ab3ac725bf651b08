"""The fixed cost around training (issue 16): where the wall time of ``dreamengine generate`` goes, per phase.

Runs the quickstart ("a red cube", 600 steps) and a 10-step run of it ``--repeats`` times each, every run in its
own ``python`` process (interpreter and import start-up included, as a user sees it), and times each phase by
wrapping the functions that do it: import/CLI start-up, config, teacher build (the toy teacher's bank), scene
build, training (steps, previews, checkpoints), export (level fit, marching cubes, cleanup, UVs, bake, write),
evaluation (held-out renders, the GLB's shape metrics, export fidelity), turntable and report. Prints a markdown
table of the medians (wall seconds; and the process's CPU seconds, steadier on a shared machine) and writes it
to bench/results/NAME.md.

    python bench/fixed_cost.py [--repeats 3] [--runs quickstart ten] [--label after] [--out fixed_cost]
                               [--merge] [key=value ...]

``--merge`` keeps the other labels' tables already in the output file, and its hand-written ``## `` notes
(measure "before" with ``PYTHONPATH=<main checkout>`` and ``--label before``, then "after" here with
``--merge``). The teacher's bank cache is left as a user has it (warm after the first run); ``--cold-cache``
points ``DREAMENGINE_CACHE`` at an empty folder for every run instead. ``OMP_NUM_THREADS`` is left as it is
(unset: torch's default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
RUNS = {"ten": ["trainer.max_steps=10"], "quickstart": []}
PROMPT = "a red cube"

# (phase, module, attribute): the function whose wall time is the phase. Names missing in a checkout are skipped.
WRAPPED = [
    ("config", "dreamengine.api", "load_config"),
    ("trainer init", "dreamengine.trainer", "Trainer.__init__"),
    ("teacher build", "dreamengine.trainer", "build_teacher"),
    ("scene build", "dreamengine.trainer", "build_scenes"),
    ("training", "dreamengine.pipeline", "Trainer.fit"),
    ("previews", "dreamengine.trainer", "Trainer.write_preview"),
    ("checkpoints", "dreamengine.trainer", "save_checkpoint"),
    ("export", "dreamengine.pipeline", "export_run"),
    ("export: level fit", "dreamengine.export.scene_export", "surface_level"),
    ("export: marching cubes", "dreamengine.export.scene_export", "mesh_from_volume"),
    ("export: cleanup", "dreamengine.export.scene_export", "clean_mesh"),
    ("export: UVs", "dreamengine.export.scene_export", "unwrap_uv"),
    ("export: bake", "dreamengine.export.scene_export", "texture_mesh"),
    ("export: write", "dreamengine.export.scene_export", "save_mesh"),
    ("evaluation", "dreamengine.pipeline", "evaluate_run"),
    ("eval: held-out renders", "dreamengine.results", "evaluate_renders"),
    ("eval: mesh metrics", "dreamengine.results", "mesh_metrics"),
    ("eval: export fidelity", "dreamengine.results", "export_fidelity_of"),
    ("turntable", "dreamengine.report.build", "make_turntable"),
    ("report page", "dreamengine.report.build", "write_report"),
    ("report (turntable + page)", "dreamengine.pipeline", "report_after_training"),
]
# Top-level phases: these add up (with "other") to the process's wall time. The rest are parts of one of them.
TOP = ["start-up", "config", "teacher build", "scene build", "trainer init (rest)", "training", "export",
       "evaluation", "report (turntable + page)", "other"]


def child(out: Path, argv: list[str]) -> None:
    """One ``dreamengine generate`` in this process, its phases timed; writes ``out`` (JSON)."""
    import importlib
    import resource

    def cpu_seconds() -> float:  # the whole process's (every thread's) user + system time
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    begin = time.perf_counter()  # interpreter start-up before this line is added from the parent's clock
    import dreamengine.api  # noqa: F401 (what `dreamengine generate` imports before doing anything)
    import dreamengine.cli as cli
    import dreamengine.pipeline  # noqa: F401

    seconds: dict[str, float] = {"start-up": time.perf_counter() - begin}
    cpu: dict[str, float] = {"start-up": cpu_seconds()}

    def wrap(phase: str, module_name: str, attribute: str) -> None:
        try:
            owner: object = importlib.import_module(module_name)
            *path, name = attribute.split(".")
            for part in path:
                owner = getattr(owner, part)
            original = getattr(owner, name)
        except (ImportError, AttributeError):
            return

        def timed(*args: object, **kwargs: object) -> object:
            start, cpu_start = time.perf_counter(), cpu_seconds()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - start
                cpu[phase] = cpu.get(phase, 0.0) + cpu_seconds() - cpu_start

        setattr(owner, name, timed)

    for phase, module_name, attribute in WRAPPED:
        wrap(phase, module_name, attribute)
    try:
        code = cli.main(argv)
    except SystemExit as stop:
        code = stop.code
    seconds["in-process"] = time.perf_counter() - begin
    cpu["total"] = cpu_seconds()
    out.write_text(json.dumps({"code": code, "seconds": seconds, "cpu": cpu}))


def run_once(extra: list[str], workdir: Path, cold_cache: bool) -> dict[str, dict[str, float]]:
    """One run in a fresh process: {"wall": phase seconds, "cpu": phase CPU seconds} (``total``: the process's)."""
    out = workdir / f"phases-{time.monotonic_ns()}.json"
    env = dict(os.environ)
    if cold_cache:
        env["DREAMENGINE_CACHE"] = tempfile.mkdtemp(dir=workdir)
    argv = ["generate", PROMPT, f"output_dir={workdir / 'runs'}", "trainer.progress=false", *extra]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, "--child", str(out), "--", *argv], env=env,
                            capture_output=True, text=True)
    total = time.perf_counter() - start
    if result.returncode != 0 or not out.is_file():
        raise SystemExit(f"run {argv} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    data = json.loads(out.read_text())
    seconds, cpu = data["seconds"], data["cpu"]
    seconds["start-up"] += total - seconds["in-process"]  # the interpreter's own start
    seconds["total"] = total
    for kind in (seconds, cpu):
        kind["trainer init (rest)"] = (kind.get("trainer init", 0.0) - kind.get("teacher build", 0.0)
                                       - kind.get("scene build", 0.0))
        kind["other"] = kind["total"] - sum(kind.get(p, 0.0) for p in TOP if p != "other")
    return {"wall": seconds, "cpu": cpu}


def table(label: str, runs: dict[str, list[dict[str, dict[str, float]]]]) -> list[str]:
    names = list(runs)
    seen = {p for rs in runs.values() for r in rs for p in r["wall"]}
    phases = [p for p in TOP if p in seen]
    parts = [p for p, _, _ in WRAPPED if p not in TOP and p != "trainer init" and p in seen]
    header = ["phase", *[f"{n} wall s" for n in names], *[f"{n} %" for n in names], *[f"{n} CPU s" for n in names]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]

    def median(name: str, phase: str, kind: str = "wall") -> float:
        return statistics.median(r[kind].get(phase, 0.0) for r in runs[name])

    def row(phase: str, shown: str) -> str:
        cells = [f"{median(n, phase):.1f}" for n in names]
        cells += [f"{100 * median(n, phase) / median(n, 'total'):.0f}" for n in names]
        cells += [f"{median(n, phase, 'cpu'):.1f}" for n in names]
        return f"| {shown} | " + " | ".join(cells) + " |"

    lines += [row(p, p) for p in phases]
    lines.append(row("total", "**total**"))
    lines += [row(p, f"&nbsp;&nbsp;{p}") for p in parts]
    counts = ", ".join(f"{len(rs)} {name}" for name, rs in runs.items())
    return [f"### {label}", "", f"Median of {counts} run(s); sub-phases (indented) are parts of the phase above them "
            "and can overlap other phases.", "", *lines, ""]


def load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--label", default="after", help="the table's heading in the output file")
    parser.add_argument("--out", default="fixed_cost", help="bench/results/OUT.md")
    parser.add_argument("--merge", action="store_true", help="keep the other labels' tables in the output file")
    parser.add_argument("--cold-cache", action="store_true", help="an empty DREAMENGINE_CACHE for every run")
    parser.add_argument("--table-only", action="store_true",
                        help="no runs: rewrite the table from the raw file of --label (kept after every run)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    raw = RESULTS / f"{args.out}-{re.sub(r'[^A-Za-z0-9_.-]', '_', args.label)}.json"
    if args.table_only:
        saved = json.loads(raw.read_text())
        write_table(args, saved["heading"], saved["runs"])
        return
    import dreamengine

    checkout = Path(dreamengine.__file__).resolve().parents[1]
    runs: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in args.runs}
    loads = [load_average()]
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # interleaved, so a burst of load elsewhere hits both runs alike
            for name in args.runs:
                seconds = run_once([*RUNS[name], *args.overrides], Path(tmp), args.cold_cache)
                runs[name].append(seconds)
                raw.parent.mkdir(parents=True, exist_ok=True)
                raw.write_text(json.dumps({"heading": heading_of(args, checkout, loads), "runs": runs}))
                wall, cpu = seconds["wall"], seconds["cpu"]
                print(f"{name} #{repeat + 1}: {wall['total']:.1f} s (training {wall.get('training', 0):.1f} s; CPU "
                      f"{cpu['total']:.1f} s, training {cpu.get('training', 0):.1f} s)", file=sys.stderr, flush=True)
            loads.append(load_average())
    write_table(args, heading_of(args, checkout, loads), runs)


def heading_of(args: argparse.Namespace, checkout: Path, loads: list[str]) -> str:
    env_threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return (f"{args.label}: {checkout} ({time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, "
            f"{os.cpu_count()} cores, OMP_NUM_THREADS {env_threads}, load average before/after each round "
            f"{' | '.join(loads)}; runs: " + ", ".join(f"{n} = `{PROMPT}` {' '.join(RUNS[n] + args.overrides)}"
                                                        for n in args.runs) + ")")


def write_table(args: argparse.Namespace, heading: str, runs: dict[str, list[dict[str, dict[str, float]]]]) -> None:
    runs = {name: rs for name, rs in runs.items() if rs}
    section = table(heading, runs)
    print("\n".join(section))
    out = RESULTS / f"{args.out}.md"
    sections: list[str] = []
    notes: list[str] = []  # hand-written "## " sections: kept, after the tables
    if args.merge and out.is_file():
        parts = re.split(r"(?m)^(?=##+ )", out.read_text())
        sections = [s for s in parts if s.startswith("### ") and not s.startswith(f"### {args.label}:")]
        notes = [s for s in parts if s.startswith("## ")]
    intro = ("# Fixed cost around training (issue 16)\n\nWritten by `python bench/fixed_cost.py` (see its docstring). "
             "Wall seconds are on a shared 2-core machine: compare rows of one table, and the CPU time.\n\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    notes_text = "".join("\n" + s.rstrip() + "\n" for s in notes)
    tables = intro + "".join(s.rstrip() + "\n\n" for s in sections) + "\n".join(section)
    out.write_text(tables.rstrip() + "\n" + notes_text)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
