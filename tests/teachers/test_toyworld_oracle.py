"""The oracle teacher: its SDS gradient is the reconstruction gradient against ground truth."""

from __future__ import annotations

import pytest
import torch

from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.errors import PromptError
from dreamengine.teachers.toyworld_oracle import ToyWorldOracle
from dreamengine.toyworld import parse_prompt, render_toy


def cameras(elevations: list[float], azimuths: list[float]):
    n = len(elevations)
    return cameras_from_spherical(torch.tensor(elevations), torch.tensor(azimuths), torch.full((n,), 2.5),
                                  torch.full((n,), 40.0))


def test_oracle_noise_is_the_noise_of_the_true_image_so_sds_is_reconstruction():
    oracle = ToyWorldOracle(resolution=16)
    cams = cameras([20.0, -10.0], [30.0, 200.0])
    truth = render_toy(parse_prompt("an orange cone"), cams, 16, 16, supersample=2)["rgb"].permute(0, 3, 1, 2)
    x_true = truth * 2 - 1
    render = (x_true + 0.3 * torch.randn_like(x_true)).clamp(-1, 1)  # some other image
    t = torch.tensor([100, 700])
    a = oracle.alphas_cumprod[t].view(-1, 1, 1, 1)
    noise = torch.randn_like(render)
    z_t = a.sqrt() * render + (1 - a).sqrt() * noise
    embeddings = oracle.embed(["an orange cone, side view", "an orange cone, back view"])
    eps = oracle.predict_noise(z_t, t, embeddings, cams)
    # SDS's eps_hat - eps is sqrt(a / (1 - a)) (x - truth): the reconstruction gradient, noise-free
    torch.testing.assert_close(eps - noise, (a / (1 - a)).sqrt() * (render - x_true), atol=1e-4, rtol=1e-4)
    # the true image itself gets zero gradient at every t
    z_true = a.sqrt() * x_true + (1 - a).sqrt() * noise
    torch.testing.assert_close(oracle.predict_noise(z_true, t, embeddings, cams), noise, atol=1e-4, rtol=1e-4)


def test_unconditional_rows_get_the_same_answer_and_bad_batches_are_refused():
    oracle = ToyWorldOracle(resolution=8)
    cams = cameras([20.0], [0.0])
    z = torch.randn(1, 3, 8, 8).repeat(2, 1, 1, 1)
    t = torch.tensor([500, 500])
    eps = oracle.predict_noise(z, t, oracle.embed(["a red cube", ""]), cams)  # cond + uncond, cameras repeated
    torch.testing.assert_close(eps[0], eps[1])
    with pytest.raises(PromptError, match="one object"):
        oracle.predict_noise(z, t, oracle.embed(["a red cube", "a blue torus"]), cams)
    with pytest.raises(ValueError, match="cameras"):
        oracle.predict_noise(z, t, oracle.embed(["a red cube", ""]), None)
