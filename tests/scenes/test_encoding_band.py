"""The progressive-band hash grid (threestudio's ProgressiveBandHashGrid): masked levels, the band's schedule on a
NeRF scene, and its place in checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dreamengine.config.run import OptimConfig
from dreamengine.config.scenes import NeRFConfig
from dreamengine.errors import ConfigError
from dreamengine.scenes.encoding import HashGridEncoding
from dreamengine.scenes.nerf import NeRFScene

TINY_GRID = {"num_levels": 4, "features_per_level": 2, "log2_hashmap_size": 8, "base_resolution": 2,
             "per_level_scale": 2.0}  # levels 2, 4, 8, 16: two dense, two hashed
TINY_NERF = {**TINY_GRID, "hidden_dim": 8, "encoding_backend": "torch"}


def points(count: int = 64) -> torch.Tensor:
    return torch.rand(count, 3, generator=torch.Generator().manual_seed(0))


def level_rows(encoding: HashGridEncoding, level: int) -> slice:
    start = int(encoding.level_offsets[level])
    return slice(start, start + int(encoding.level_sizes[level]))


def test_masked_levels_output_exactly_zero_and_get_no_gradient() -> None:
    encoding = HashGridEncoding(**TINY_GRID, backend="torch", init_scale=0.5)
    x = points()
    full = encoding(x)
    banded = encoding(x, active_levels=2)
    assert torch.equal(banded[:, :4], full[:, :4])  # levels 0, 1 untouched
    assert torch.equal(banded[:, 4:], torch.zeros_like(banded[:, 4:]))  # levels 2, 3 exactly 0
    weights = torch.randn(banded.shape, generator=torch.Generator().manual_seed(1))
    (banded * weights).sum().backward()
    grad = encoding.table.grad
    for level in (0, 1):
        assert grad[level_rows(encoding, level)].abs().sum() > 0
    for level in (2, 3):
        assert torch.equal(grad[level_rows(encoding, level)], torch.zeros_like(grad[level_rows(encoding, level)]))
    assert torch.equal(encoding(x, active_levels=torch.tensor(4)), full)  # every level: the plain output
    assert torch.equal(encoding(x, active_levels=0), torch.zeros_like(full))


def test_the_mask_applies_to_the_tiny_cuda_nn_output_too() -> None:
    """The CUDA backend's output goes through the same mask (a stand-in module plays tinycudann.Encoding)."""
    encoding = HashGridEncoding(**TINY_GRID, backend="torch")
    encoding.backend = "cuda"
    encoding.tcnn_encoding = nn.Linear(3, encoding.output_dim)
    out = encoding(points(), active_levels=3)
    assert torch.equal(out[:, 6:], torch.zeros_like(out[:, 6:])) and out[:, :6].abs().sum() > 0
    out.sum().backward()
    weight_grad = encoding.tcnn_encoding.weight.grad
    assert torch.equal(weight_grad[6:], torch.zeros_like(weight_grad[6:])) and weight_grad[:6].abs().sum() > 0


def threestudio_level(step: int, start_level: int, start_step: int, update_steps: int, n_levels: int) -> int:
    """ProgressiveBandHashGrid.update_step's level (threestudio/models/networks.py), called with global_step."""
    return min(start_level + max(step - start_step, 0) // update_steps, n_levels)


def test_the_band_grows_one_level_every_update_steps_from_start_step() -> None:
    scene = NeRFScene(NeRFConfig(**TINY_NERF, progressive_start_level=1, progressive_start_step=10,
                                 progressive_update_steps=5))
    optimizer = torch.optim.Adam(scene.param_groups(OptimConfig()))
    seen = [int(scene.active_levels)]  # the first step's band, before any update
    for step in range(1, 40):
        scene.update_schedules(optimizer, step)  # the trainer: after `step` steps, for the next one
        seen.append(int(scene.active_levels))
    assert seen == [threestudio_level(step, 1, 10, 5, 4) for step in range(40)]
    assert [step for step in range(1, 40) if seen[step] > seen[step - 1]] == [15, 20, 25]  # then all 4 levels
    # dreamfusion-sd's values on 16 levels: 8 levels until step 2499, 9 from 2500, all 16 from 6000
    big = NeRFScene(NeRFConfig(**{**TINY_NERF, "num_levels": 16, "per_level_scale": 1.2},
                               progressive_start_level=8, progressive_start_step=2000, progressive_update_steps=500))
    assert [big.band_at(s) for s in (0, 2000, 2499, 2500, 2999, 3000, 5999, 6000, 10000)] == \
        [8, 8, 8, 9, 9, 10, 15, 16, 16]


def test_inactive_levels_do_not_change_the_field_and_get_no_gradient() -> None:
    scene = NeRFScene(NeRFConfig(**TINY_NERF, progressive_start_level=2, progressive_update_steps=100))
    with torch.no_grad():
        scene.encoding.table.uniform_(-0.5, 0.5)
    x = points() * 1.6 - 0.8
    density, albedo = scene.query(x)
    (density.sum() + albedo.sum()).backward()
    grad = scene.encoding.table.grad
    assert grad[level_rows(scene.encoding, 0)].abs().sum() > 0
    for level in (2, 3):
        rows = level_rows(scene.encoding, level)
        assert torch.equal(grad[rows], torch.zeros_like(grad[rows]))
    with torch.no_grad():  # what the inactive levels hold does not matter
        scene.encoding.table[level_rows(scene.encoding, 3)] += 1.0
        assert torch.equal(scene.density(x), density)


def test_off_by_default_every_level_always() -> None:
    scene = NeRFScene(NeRFConfig(**TINY_NERF))
    assert not scene.progressive and int(scene.active_levels) == 4
    scene.update_schedules(torch.optim.Adam(scene.param_groups(OptimConfig())), 3)
    assert int(scene.active_levels) == 4
    x = points()
    assert torch.equal(scene.encode(x), scene.encoding(scene.normalize(x)))


def test_the_band_is_saved_restored_and_old_checkpoints_load_with_every_level() -> None:
    cfg = NeRFConfig(**TINY_NERF, progressive_start_level=1, progressive_update_steps=10)
    trained = NeRFScene(cfg)
    trained.update_schedules(torch.optim.Adam(trained.param_groups(OptimConfig())), 25)
    assert int(trained.active_levels) == 3
    resumed = NeRFScene(cfg)
    assert int(resumed.active_levels) == 1
    resumed.load_state_dict(trained.state_dict())
    assert int(resumed.active_levels) == 3
    x = points()
    assert torch.equal(resumed.density(x), trained.density(x))
    old = {k: v for k, v in NeRFScene(NeRFConfig(**TINY_NERF)).state_dict().items() if k != "active_levels"}
    plain = NeRFScene(NeRFConfig(**TINY_NERF))
    plain.load_state_dict(old)  # a checkpoint from before the band: strict load, every level active
    assert int(plain.active_levels) == 4


@pytest.mark.parametrize("bad", [{"progressive_start_level": 2}, {"progressive_start_level": 5,
                                                                   "progressive_update_steps": 10}])
def test_a_band_needs_update_steps_and_at_most_num_levels(bad) -> None:
    with pytest.raises(ConfigError, match="progressive"):
        NeRFScene(NeRFConfig(**TINY_NERF, **bad))
