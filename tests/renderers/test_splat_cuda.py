"""gsplat's CUDA rasterizer against our torch rasterizer on the same scene (runs only with a CUDA GPU)."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch

from dreamengine.config.scenes import GaussiansConfig
from dreamengine.core.background import Background
from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.renderers.splat import render_splats
from dreamengine.scenes.gaussians import GaussianScene

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", tempfile.mkdtemp(prefix="torch_ext_"))


def scene_on_gpu(sh_degree: int) -> GaussianScene:
    scene = GaussianScene(GaussiansConfig(num_points=3000, sh_degree=sh_degree, init_radius=0.6, init_scale=0.03,
                                          init_opacity=0.4, seed=1))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        scene.quats.add_(0.3 * torch.randn(scene.quats.shape, generator=generator))
        scene.log_scales.add_(0.3 * torch.randn(scene.log_scales.shape, generator=generator))
        scene.sh_rest.normal_(0.0, 0.1, generator=generator)
    return scene.cuda()


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_gsplat_matches_the_torch_rasterizer(sh_degree: int) -> None:
    pytest.importorskip("gsplat")
    cams = cameras_from_spherical(torch.tensor([15.0, 50.0]), torch.tensor([30.0, -120.0]), torch.tensor([2.5, 2.2]),
                                  torch.tensor([40.0, 50.0])).to("cuda")
    background = Background(color=(0.2, 0.3, 0.4)).cuda()
    outputs, grads = {}, {}
    for backend in ("torch", "cuda"):
        scene = scene_on_gpu(sh_degree)
        out = render_splats(scene.render_inputs(), cams, 96, 128, background=background, backend=backend)
        (out.rgb.square().sum() + out.opacity.sum() + 0.1 * out.depth.sum()).backward()
        outputs[backend] = out
        grads[backend] = {name: p.grad.clone() for name, p in scene.parameters_by_name().items()}
    ours, theirs = outputs["torch"], outputs["cuda"]
    for field in ("rgb", "opacity", "depth"):
        difference = (getattr(ours, field) - getattr(theirs, field)).abs()
        assert float(difference.max()) < 2e-3, (field, float(difference.max()))
    assert torch.equal(ours.info["radii"] > 0, theirs.info["radii"] > 0)
    for name, grad in grads["torch"].items():
        reference = grads["cuda"][name]
        if float(reference.abs().max()) == 0:
            continue
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), reference.flatten(), dim=0)
        assert float(cosine) > 0.99, (name, float(cosine))
        assert math.isclose(float(grad.norm()), float(reference.norm()), rel_tol=0.05), name
