"""Reference-view depth and normal-smoothness losses of image-to-3D (threestudio's zero123 system, Magic123):
the depth map's reading and framing, the losses against their formulas, and a run that uses them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dreamengine.api import prepare
from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.errors import ConfigError, ImageFileError
from dreamengine.images import load_reference_image, read_depth
from dreamengine.toyworld import all_objects, render_toy
from dreamengine.trainer import depth_correlation_loss, fitted_depth_loss, normal_smoothness
from tests.cli_helpers import run_cli_in_process
from tests.test_image_to_3d import FAST


def toy_render_with_depth(folder, name: str = "a red cube", size: int = 64):
    """A toy object at elevation 15, azimuth 30: (RGBA PNG path, depth .npy path, the render's dict)."""
    obj = next(o for o in all_objects() if o.name == name)
    cameras = cameras_from_spherical(torch.tensor([15.0]), torch.tensor([30.0]), torch.tensor([2.5]),
                                     torch.tensor([40.0]))
    out = render_toy(obj, cameras, size, size, supersample=2)
    rgba = torch.cat([out["rgb"][0], out["mask"][0]], dim=-1).numpy()
    image = folder / "ref.png"
    Image.fromarray((rgba * 255.0 + 0.5).astype(np.uint8), "RGBA").save(image)
    depth = folder / "ref_depth.npy"
    np.save(depth, out["depth"][0, ..., 0].numpy())
    return image, depth, out


def test_depth_maps_in_every_accepted_form_and_the_refused_ones(tmp_path):
    values = np.linspace(0.0, 1.0, 20 * 30).reshape(20, 30)
    np.save(tmp_path / "d.npy", values)
    np.testing.assert_allclose(read_depth(tmp_path / "d.npy", (20, 30)), values, atol=1e-6)
    Image.fromarray((values * 65535).astype(np.uint16)).save(tmp_path / "d16.png")  # a 16-bit PNG
    np.testing.assert_allclose(read_depth(tmp_path / "d16.png", (20, 30)) / 65535.0, values, atol=1e-4)
    gray = np.repeat((values * 255).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(gray, "RGB").save(tmp_path / "gray_rgb.png")  # a gray map saved as RGB is read
    assert read_depth(tmp_path / "gray_rgb.png", (20, 30)).shape == (20, 30)
    Image.fromarray(np.stack([gray[..., 0], np.full_like(gray[..., 0], 255)], axis=2), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_depth(tmp_path / "la.png", (20, 30)), gray[..., 0])  # gray + alpha

    colored = gray.copy()
    colored[..., 0] = 255 - colored[..., 0]
    Image.fromarray(colored, "RGB").save(tmp_path / "colormap.png")
    np.save(tmp_path / "nan.npy", np.where(values > 0.5, np.nan, values))
    np.save(tmp_path / "flat.npy", np.ones((20, 30)))
    (tmp_path / "junk.png").write_bytes(b"no image")
    refused = {"missing.png": "does not exist", "colormap.png": "color image", "d.npy": "is 30x20 pixels but the "
               "image is 31x20", "nan.npy": "non-finite", "flat.npy": "constant", "junk.png": "could not read"}
    for name, message in refused.items():
        shape = (20, 31) if name == "d.npy" else (20, 30)
        with pytest.raises(ImageFileError, match=message):
            read_depth(tmp_path / name, shape)


@pytest.mark.parametrize("center", [False, True])
def test_depth_is_framed_with_the_image(tmp_path, center):
    image, depth, out = toy_render_with_depth(tmp_path)
    reference = load_reference_image(image, 32, 32, (1.0, 1.0, 1.0), center=center, depth_path=depth)
    assert reference.depth is not None and reference.depth.shape == (32, 32, 1)
    inside = reference.mask[..., 0] > 0.99
    truth = out["depth"][0, ..., 0]
    assert float(reference.depth[inside].min()) >= float(truth[truth > 0].min()) - 1e-4
    assert float(reference.depth[inside].max()) <= float(truth.max()) + 1e-4
    if not center:  # the toy framing: the map resized as the image is (area filter over 2x2 blocks)
        pooled = torch.nn.functional.avg_pool2d((out["depth"][0] * out["mask"][0]).permute(2, 0, 1)[None], 2)[0, 0]
        mask = torch.nn.functional.avg_pool2d(out["mask"][0].permute(2, 0, 1)[None], 2)[0, 0]
        expected = pooled / mask.clamp(min=1e-6)
        torch.testing.assert_close(reference.depth[..., 0][inside], expected[inside], atol=1e-3, rtol=1e-3)
    else:  # recentered: the object's nearest and farthest points keep their depths
        assert float(reference.depth[inside].max() - reference.depth[inside].min()) > 0.3


def test_fitted_depth_loss_is_the_mse_after_a_least_squares_scale_and_shift():
    generator = torch.Generator().manual_seed(0)
    depth = torch.rand(50, 1, generator=generator) + 2.0
    assert float(fitted_depth_loss(depth, 3.0 * depth - 1.0)) < 1e-10  # depth at another scale
    assert float(fitted_depth_loss(depth, -0.5 * depth + 4.0)) < 1e-10  # flipped, as a disparity-like map is
    target = torch.rand(50, 1, generator=generator)
    a, b = np.polyfit(target[:, 0].numpy().astype(np.float64), depth[:, 0].numpy().astype(np.float64), 1)
    expected = np.mean((a * target[:, 0].numpy() + b - depth[:, 0].numpy()) ** 2)
    depth.requires_grad_()
    loss = fitted_depth_loss(depth, target)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    loss.backward()  # the fit is held fixed: d loss / d depth = 2 (depth - fitted) / M
    fitted = torch.from_numpy(a * target.numpy() + b).float()
    torch.testing.assert_close(depth.grad, 2.0 * (depth.detach() - fitted) / 50, atol=1e-5, rtol=1e-4)


def test_depth_correlation_loss_is_one_minus_pearson():
    generator = torch.Generator().manual_seed(1)
    depth, target = torch.rand(40, 1, generator=generator), torch.rand(40, 1, generator=generator)
    expected = 1.0 - np.corrcoef(depth[:, 0].numpy(), target[:, 0].numpy())[0, 1]
    assert float(depth_correlation_loss(depth, target)) == pytest.approx(expected, abs=1e-5)
    assert float(depth_correlation_loss(depth, 2.0 * depth + 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(depth_correlation_loss(depth, -depth)) == pytest.approx(2.0, abs=1e-6)


def test_normal_smoothness_against_a_loop():
    normal = torch.rand(2, 5, 6, 3, generator=torch.Generator().manual_seed(2))
    vertical = sum(float((normal[b, i + 1, j] - normal[b, i, j]).square().sum())
                   for b in range(2) for i in range(4) for j in range(6)) / (2 * 4 * 6 * 3)
    horizontal = sum(float((normal[b, i, j + 1] - normal[b, i, j]).square().sum())
                     for b in range(2) for i in range(5) for j in range(5)) / (2 * 5 * 5 * 3)
    assert float(normal_smoothness(normal)) == pytest.approx(vertical + horizontal, rel=1e-5)


def test_a_run_with_a_depth_map_keeps_a_copy_and_weighs_the_reference_depth(tmp_path):
    image, depth, _ = toy_render_with_depth(tmp_path)
    before = depth.read_bytes()
    overrides = [*FAST, f"image.depth_path={depth}", "image.lambda_depth=0.5", "image.lambda_depth_rel=0.1",
                 "loss.lambda_normal_smooth=2.0"]  # normals rendered under albedo shading for the smoothness
    run = prepare(image=image, system="zero123-toy", overrides=overrides, run_dir=tmp_path / "run")
    copy = tmp_path / "run" / "input" / "depth-ref_depth.npy"
    assert copy.read_bytes() == before == depth.read_bytes()  # copied byte for byte, the user's file untouched
    recorded = yaml.safe_load((tmp_path / "run" / "stages" / "01-nerf" / "config.yaml").read_text())
    assert recorded["image"]["depth_path"] == str(copy.resolve())
    losses = run.trainer.reference_losses()
    assert set(losses) == {"ref_rgb", "ref_mask", "ref_depth", "ref_depth_rel"}
    assert all(bool(torch.isfinite(v)) and float(v) >= 0 for v in losses.values())
    terms = run.trainer.train_step()
    assert terms["normal_smooth"] > 0


def test_depth_settings_without_their_inputs_stop_before_any_work(tmp_path):
    image, depth, _ = toy_render_with_depth(tmp_path)
    with pytest.raises(ConfigError, match="image.depth_path"):
        prepare(image=image, system="zero123-toy", overrides=[*FAST, "image.lambda_depth=1"], run_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="give the image too"):
        prepare("a red cube", overrides=[*FAST, f"image.depth_path={depth}"], run_dir=tmp_path / "b")
    with pytest.raises(ImageFileError, match="is 64x64 pixels but the image is 40x40"):
        small = tmp_path / "small.png"
        Image.open(image).resize((40, 40)).save(small)
        prepare(image=small, system="zero123-toy", overrides=[*FAST, f"image.depth_path={depth}"],
                run_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match="does not render"):  # splats render no normal maps
        prepare(image=image, system="dreamgaussian-image-toy", overrides=[*FAST, "loss.lambda_normal_smooth=1"],
                run_dir=tmp_path / "d")
    assert not any((tmp_path / name).exists() for name in "abcd")
    result = run_cli_in_process(["generate", "--image", str(image), "--system", "zero123-toy", "image.lambda_depth=1"],
                                tmp_path)
    assert result.returncode == 2 and "image.depth_path" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()
