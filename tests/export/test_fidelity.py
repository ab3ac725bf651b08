"""Export fidelity: a scene against its own exported (and reloaded) mesh, and against broken exports."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dreamengine.config import ExportConfig
from dreamengine.core.background import Background
from dreamengine.export import load_mesh, save_mesh
from dreamengine.export.fidelity import export_fidelity, fidelity_cameras
from dreamengine.export.mesh_io import Z_UP_TO_Y_UP
from dreamengine.export.scene_export import export_scene
from dreamengine.renderers.volume import render_volume
from tests.gltf_validator import assert_valid_glb
from tests.toy_fields import ToyField

WHITE = Background(color=(1.0, 1.0, 1.0))
RES = 32


def sharp_toy_field(prompt: str) -> ToyField:
    """A toy object as a volume-renderable field with a sharp surface (density 200 inside, 100 on the
    surface, negligible 0.02 outside), so volume renders and the level-set mesh share their silhouettes."""
    return ToyField(prompt, peak=200.0, sharpness=0.002)


@pytest.fixture(scope="module")
def cone_export(tmp_path_factory):
    scene = sharp_toy_field("a blue cone")
    folder = tmp_path_factory.mktemp("fidelity")
    cfg = ExportConfig(resolution=48, threshold=100.0, target_faces=3000, texture_size=128)
    path = export_scene(scene, cfg, folder / "model.glb", "glb", {"prompt": "a blue cone"})
    assert_valid_glb(path)
    cameras = fidelity_cameras(num_views=4)
    renders = render_volume(scene, cameras, RES, RES, background=WHITE, num_samples=128, perturb=False)

    def render(cams, height, width):
        assert cams is cameras and (height, width) == (RES, RES)
        return renders

    return scene, path, cameras, render


def test_a_scene_matches_its_own_export(cone_export):
    _, path, cameras, render = cone_export
    result = export_fidelity(path, render, cameras, RES, RES, background=WHITE)
    assert result["views"] == 6 and result["resolution"] == [RES, RES]
    assert result["mask_iou"] > 0.95  # measured 0.977
    assert result["psnr"] > 25.0  # measured 27.7 dB (silhouette pixels differ most)


def test_broken_exports_score_low(cone_export, tmp_path):
    scene, path, cameras, render = cone_export
    good = export_fidelity(path, render, cameras, RES, RES, background=WHITE)
    mesh = load_mesh(path)

    # Written without converting Z-up to Y-up: the cone lies on its side when read back.
    lying = mesh.copy()
    lying.apply_transform(np.linalg.inv(Z_UP_TO_Y_UP))
    rotated = export_fidelity(save_mesh(lying, tmp_path / "lying.glb"), render, cameras, RES, RES, background=WHITE)
    assert_valid_glb(tmp_path / "lying.glb")  # a valid file, just the wrong way up
    assert rotated["mask_iou"] < 0.6 < good["mask_iou"]

    # Right shape, wrong colors (red and blue channels swapped): the masks agree, the images do not.
    swapped = mesh.copy()
    image = np.asarray(swapped.visual.material.baseColorTexture.convert("RGB"))[..., ::-1]
    swapped.visual.material.baseColorTexture = Image.fromarray(np.ascontiguousarray(image))
    recolored = export_fidelity(save_mesh(swapped, tmp_path / "swapped.glb"), render, cameras, RES, RES,
                                background=WHITE)
    assert_valid_glb(tmp_path / "swapped.glb")
    assert recolored["mask_iou"] == pytest.approx(good["mask_iou"], abs=1e-6)
    assert recolored["psnr"] < good["psnr"] - 8.0
