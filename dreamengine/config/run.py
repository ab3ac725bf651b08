"""The run configuration schema: :class:`RunConfig` and its sections, as plain dataclasses.

This module and the section modules next to it (``guidance.py``, ``scenes.py``, ``teachers.py``,
``prompts.py``) import no implementation: ``import dreamengine.config`` loads no torch, no mesh library and no
diffusion model (a test checks it). ``__post_init__`` methods validate values when a config is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dreamengine.config.guidance import GUIDANCE_CONFIGS
from dreamengine.config.image import ImageConfig, TextPriorConfig
from dreamengine.config.prompts import PromptConfig
from dreamengine.config.scenes import SCENE_CONFIGS, DensifyConfig
from dreamengine.config.teachers import TEACHER_CONFIGS
from dreamengine.errors import ConfigError


@dataclass
class CameraPhase:
    """From step ``start`` on, render other sizes (threestudio's resolution milestones)."""

    start: int = 0
    height: int = 64
    width: int = 64
    batch_size: int = 1


@dataclass
class CameraConfig:
    """Random training views (see dreamengine/core/cameras.py for the convention)."""

    height: int = 64  # render height in pixels
    width: int = 64
    batch_size: int = 1  # views per optimization step
    # later sizes, e.g. ProlificDreamer's [{start: 5000, height: 512, width: 512, batch_size: 1}]
    phases: list[CameraPhase] = field(default_factory=list)
    elevation_range: list[float] = field(default_factory=lambda: [-10.0, 60.0])  # degrees
    azimuth_range: list[float] = field(default_factory=lambda: [-180.0, 180.0])  # degrees
    distance_range: list[float] = field(default_factory=lambda: [2.5, 2.5])  # scene units
    fovy_range: list[float] = field(default_factory=lambda: [40.0, 40.0])  # vertical fov, degrees
    # views drawn together with one elevation, distance and fov, azimuths 360/n apart (MVDream: 4); every batch
    # size must be a multiple of it
    views_per_group: int = 1
    # distance_range relative to the fov: a camera stands at d / tan(fovy / 2) (threestudio's relative_radius)
    relative_distance: bool = False

    def __post_init__(self) -> None:
        starts = [phase.start for phase in self.phases]
        if any(start < 1 for start in starts) or starts != sorted(set(starts)):
            raise ConfigError(f"camera.phases must start at increasing steps >= 1, got starts {starts}")
        for phase in [self, *self.phases]:
            if min(phase.height, phase.width, phase.batch_size) < 1:
                raise ConfigError(f"camera sizes must be >= 1, got {phase.height}x{phase.width}, batch "
                                  f"{phase.batch_size}")
            if self.views_per_group >= 1 and phase.batch_size % self.views_per_group:
                raise ConfigError(f"camera.batch_size (and each phase's) must be a multiple of camera.views_per_group "
                                  f"= {self.views_per_group}, got {phase.batch_size}")

    def framing(self) -> tuple[float, float]:
        """(distance in scene units, vertical fov in degrees) of the middle camera: the midpoints of
        ``distance_range`` and ``fovy_range`` (the distance divided by tan(fovy / 2) when ``relative_distance``).
        Previews, evaluation, export and the toy teacher's bank frame the object with it."""
        fovy = 0.5 * (self.fovy_range[0] + self.fovy_range[1])
        distance = 0.5 * (self.distance_range[0] + self.distance_range[1])
        if self.relative_distance:
            distance /= math.tan(math.radians(fovy) / 2.0)
        return distance, fovy

    def size_at(self, step: int) -> tuple[int, int, int]:
        """(height, width, batch_size) used at ``step``: the last phase started by then, else the base sizes."""
        current: CameraConfig | CameraPhase = self
        for phase in self.phases:
            if step >= phase.start:
                current = phase
        return current.height, current.width, current.batch_size


@dataclass
class RenderConfig:
    num_samples: int = 48  # samples per ray (stratified inside the bounding sphere)
    shading: str = "albedo"  # albedo | diffuse | textureless
    # threestudio's ambient_only_steps: training steps before this one render albedo whatever ``shading`` is
    # (normals are still computed for the orientation loss); 0: off
    albedo_warmup_steps: int = 0
    background: str = "solid"  # solid | mlp
    background_color: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    # threestudio's background random_aug: with this probability a training step's views each get a random solid
    # background color instead of the background (source: 0.5 where used, e.g. ScaleDreamer, CSD); 0: off
    random_background_prob: float = 0.0
    backend: str = "auto"  # auto | cuda | torch: CUDA accelerators (nerfacc, tiny-cuda-nn) when present
    # NeRF: render normals even under albedo shading (set by the run when loss.lambda_normal_smooth needs them, as
    # threestudio computes them under ambient-only shading)
    compute_normals: bool = False
    occupancy_grid: bool = True  # skip samples in empty cells of a coarse grid (Instant-NGP); much faster
    occupancy_resolution: int = 32  # cells per side
    occupancy_update_every: int = 16  # steps between grid refreshes
    occupancy_threshold: float = 0.01  # a cell is empty when its alpha per sample stays below this


OPTIMIZERS = ("adam", "adamw")


@dataclass
class OptimConfig:
    """Adam or AdamW, one learning rate per parameter group."""

    name: str = "adam"  # adam | adamw (decoupled weight decay: ProlificDreamer's and ScaleDreamer's optimizer)
    lr_encoding: float = 0.01
    lr_network: float = 0.001
    lr_background: float = 0.001
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-15
    weight_decay: float = 0.0  # adam: L2 added to the gradient; adamw: decoupled decay (torch's AdamW default 0.01)

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name must be one of {', '.join(OPTIMIZERS)}; got {self.name!r}")


@dataclass
class LossConfig:
    """Regularizer weights, as threestudio's DreamFusion system uses them (schedules allowed)."""

    lambda_sparsity: Any = 0.0  # mean opacity of the render: discourages floaters
    lambda_opaque: Any = 0.0  # binary cross-entropy pushing opacity to 0 or 1
    lambda_orient: Any = 0.0  # normals facing away from the camera (needs shading != albedo)
    # threestudio zero123's 2D normal smoothness: squared differences of neighbouring pixels of the rendered normal
    # map (NeRF scenes; the normals are rendered for it whatever the shading: measured ~8x the time of an albedo
    # step on a 2-core CPU at 48 px, image-to-3D with the reference view)
    lambda_normal_smooth: Any = 0.0


@dataclass
class ParallelConfig:
    """DreamPropeller's generalized Picard iteration over a window of future steps (dreamengine/picard.py).

    Every step's randomness is drawn from (seed, step) alone, the gradients of ``window`` guessed steps are computed
    at once (by ``workers`` processes, one per GPU where there are several), the optimizer is replayed over them and
    the window moves to the first step whose parameters moved more than the threshold (the reference's defaults)."""

    window: int = 1  # P steps evaluated per iteration; 1: the ordinary sequential loop (the default)
    workers: int = 1  # processes that compute gradients (this one included): GPUs, or CPU processes; 1: this process
    threshold: float = 30.0  # initial tau: mean squared parameter error x 1e6 above which a guessed step is redone
    ema_decay: float = 0.9  # tau <- decay tau + (1 - decay) error (the window's median or mean error)
    adaptivity: str = "median"  # median | mean (ProlificDreamer's) | fixed (tau stays at threshold)
    # draw each step's randomness from (seed, step) alone; null: on exactly when window > 1 (a sequential run with
    # it on is the trajectory the Picard iteration converges to, for comparison)
    seed_per_step: bool | None = None

    def __post_init__(self) -> None:
        if self.window < 1 or self.workers < 1:
            raise ConfigError(f"trainer.parallel.window and trainer.parallel.workers must be >= 1, got "
                              f"{self.window} and {self.workers}")
        if self.workers > self.window:
            raise ConfigError(f"trainer.parallel.workers={self.workers} is more than the window "
                              f"({self.window}): each worker computes one step of the window, so set "
                              f"trainer.parallel.window >= trainer.parallel.workers")
        if not (self.threshold >= 0.0 and math.isfinite(self.threshold)):
            raise ConfigError(f"trainer.parallel.threshold must be a finite number >= 0, got {self.threshold}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"trainer.parallel.ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.adaptivity not in ("median", "mean", "fixed"):
            raise ConfigError(f"trainer.parallel.adaptivity must be median, mean or fixed, got {self.adaptivity!r}")

    @property
    def step_seeds(self) -> bool:
        """Whether each step's random numbers come from (seed, step) alone."""
        return self.window > 1 if self.seed_per_step is None else self.seed_per_step


@dataclass
class TrainerConfig:
    max_steps: int = 600
    n_particles: int = 1  # scenes optimized together (VSD's particles share its score model); >= 1
    log_every: int = 10  # append a line to metrics.jsonl every N steps
    preview_every: int = 100  # write previews/step-XXXXXX.png every N steps (0: never)
    checkpoint_every: int = 100  # write ckpt/last.pt every N steps (0: only at the end and on signals)
    max_bad_steps: int = 10  # stop after this many NaN/Inf steps in a row
    progress: bool = True  # show a progress bar on a terminal
    # CUDA out of memory in a step: stop (checkpoint, print the settings to lower and the resume command, exit
    # non-zero) | shrink (halve the batch, else render 3/4 the size; recorded in metrics and config.yaml; go on)
    on_oom: str = "stop"
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # DreamPropeller (off by default)

    def __post_init__(self) -> None:
        if self.n_particles < 1:
            raise ConfigError(f"trainer.n_particles must be >= 1, got {self.n_particles}")
        if self.on_oom not in ("stop", "shrink"):
            raise ConfigError(f"trainer.on_oom must be 'stop' or 'shrink', got {self.on_oom!r}")


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: ["glb"])  # written after training: glb | obj | ply
    resolution: int = 128  # marching-cubes grid per side
    threshold: float | None = None  # density level of the surface; null: fit it to the renders' silhouettes
    level_fit_resolution: int = 64  # threshold null: pixels per side of the 16 views fitted (and of the coarse grid)
    stable_topology: bool = True  # threshold null: lower the fitted level to where the solid's topology is stable
    target_faces: int = 20000  # quadric decimation budget (0: keep all faces)
    min_component_fraction: float = 0.05  # drop pieces smaller than this fraction of the largest
    close_holes: int = 30  # close holes with at most this many boundary edges (0: keep holes)
    fill_voids: bool = True  # fill pockets enclosed inside the surface (else each one adds an inner shell)
    remesh_iterations: int = 0  # isotropic remeshing iterations before decimation (0: no remeshing)
    remesh_edge_length: float = 1.0  # remeshing target edge length, percent of the bounding-box diagonal
    appearance: str = "texture"  # glb/obj: texture (xatlas UVs, baked PNG, PBR material) | vertex_colors; ply: colors
    texture_size: int = 1024  # texels per side of the baked textures
    texture_padding: int = 4  # empty texels between UV charts (empty texels are then filled from the nearest chart)
    roughness: float = 1.0  # PBR roughness factor where the scene has no roughness field
    metallic: float = 0.0  # PBR metallic factor where the scene has no metallic field
    size: float = 1.0  # scale files so the longest bounding-box side is this many meters (0: keep scene units)

    def __post_init__(self) -> None:
        if self.appearance not in ("texture", "vertex_colors"):
            raise ConfigError(f"export.appearance must be 'texture' or 'vertex_colors', got {self.appearance!r}")
        if self.level_fit_resolution < 8:
            raise ConfigError(f"export.level_fit_resolution must be >= 8, got {self.level_fit_resolution}")
        if self.texture_size < 16 or self.texture_padding < 0:
            raise ConfigError("export.texture_size must be >= 16 and export.texture_padding >= 0, got "
                              f"{self.texture_size}, {self.texture_padding}")
        if not (0.0 <= self.roughness <= 1.0 and 0.0 <= self.metallic <= 1.0):
            raise ConfigError(f"export.roughness and export.metallic must be in [0, 1], got {self.roughness}, "
                              f"{self.metallic}")
        if self.size < 0 or self.close_holes < 0 or self.remesh_iterations < 0 or not self.remesh_edge_length > 0:
            raise ConfigError("export.size, export.close_holes and export.remesh_iterations must be >= 0 and "
                              f"export.remesh_edge_length > 0, got {self.size}, {self.close_holes}, "
                              f"{self.remesh_iterations}, {self.remesh_edge_length}")


@dataclass
class EvalConfig:
    """Held-out views of toy-world runs (dreamengine/evaluate.py): ``num_views`` azimuths at each elevation, and
    one view from above. A run's ``mask_iou`` and ``psnr`` are over all of them; ``bands`` has each elevation."""

    num_views: int = 8  # azimuths per elevation (halfway between the teacher bank's views)
    elevations: list[float] = field(default_factory=lambda: [-10.0, 20.0, 50.0])  # degrees: undersides, sides, tops
    overhead: bool = True  # one more view from straight above
    resolution: int = 64

    def __post_init__(self) -> None:
        if self.num_views < 1 or self.resolution < 8 or not (self.elevations or self.overhead):
            raise ConfigError("eval.num_views must be >= 1, eval.resolution >= 8, and eval.elevations non-empty "
                              f"unless eval.overhead is true; got {self.num_views}, {self.resolution}, "
                              f"{list(self.elevations)}, {self.overhead}")
        if any(not -90.0 < e < 90.0 for e in self.elevations):
            raise ConfigError(f"eval.elevations must be in (-90, 90) degrees, got {list(self.elevations)}")


@dataclass
class ReportConfig:
    """The turntable that ``report.html`` shows (written at the end of a run; see docs/report.md)."""

    turntable: bool = True  # render final/turntable.mp4 and .gif from the trained scene
    turntable_frames: int = 0  # frames per turn; 0: 90 on a GPU, 36 on a CPU
    turntable_size: int = 0  # pixels per side, a multiple of 16; 0: twice the training resolution (64 to 512)

    def __post_init__(self) -> None:
        if self.turntable_frames != 0 and self.turntable_frames < 2:
            raise ConfigError(f"report.turntable_frames must be 0 (automatic) or >= 2, got {self.turntable_frames}")
        if self.turntable_size != 0 and (self.turntable_size < 16 or self.turntable_size % 16):
            raise ConfigError("report.turntable_size must be 0 (automatic) or a multiple of 16 (H.264 encodes "
                              f"16x16 blocks), got {self.turntable_size}")


@dataclass
class LoggingConfig:
    """Extra training logs besides ``metrics.jsonl`` (see docs/architecture.md)."""

    # TensorBoard event files in RUN_DIR/tensorboard/ (pip install 'dreamengine[tensorboard]'): every loss term,
    # gradient norms, step timings and learning rates every trainer.log_every steps, the preview grids and the
    # resolved config. `tensorboard --logdir runs` shows runs side by side.
    tensorboard: bool = False
    tensorboard_flush_seconds: float = 10.0  # how often the event file is flushed to disk (> 0)


@dataclass
class RunConfig:
    prompt: str = ""
    seed: int = 0
    deterministic: bool = False  # bit-reproducible runs (also across kill + resume)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    output_dir: str = "runs"
    camera: CameraConfig = field(default_factory=CameraConfig)
    prompt_processor: PromptConfig = field(default_factory=PromptConfig)
    teacher: Any = None  # replaced by TEACHER_CONFIGS[name]
    guidance: Any = None  # replaced by GUIDANCE_CONFIGS[name]
    scene: Any = None  # replaced by SCENE_CONFIGS[name]
    render: RenderConfig = field(default_factory=RenderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)  # Gaussian scenes only
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    image: ImageConfig = field(default_factory=ImageConfig)  # image-to-3D: the reference image and its losses
    text_prior: TextPriorConfig = field(default_factory=TextPriorConfig)  # Magic123: a text teacher's SDS too


POLYMORPHIC_SECTIONS = {"teacher": TEACHER_CONFIGS, "guidance": GUIDANCE_CONFIGS, "scene": SCENE_CONFIGS}
DEFAULT_NAMES = {"teacher": "toyworld", "guidance": "sds", "scene": "nerf"}
