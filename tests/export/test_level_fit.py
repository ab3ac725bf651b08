"""The automatic surface level: the silhouette fit and the stable-topology correction (issue 17).

A camera-aware toy run's sphere had an interior barely denser than the silhouette-fitted level, and that level
cut it into a foam (mesh Euler characteristic -265). These fields reproduce that on an analytic shape: a ball
whose density straddles the level.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy import ndimage

from dreamengine.evaluate import topology
from dreamengine.export import scene_export
from dreamengine.export.marching import mesh_from_volume
from dreamengine.export.scene_export import silhouette_threshold, solid_topology, stable_topology_level

RES = 64
AXIS = np.linspace(-1.0, 1.0, RES)
X, Y, Z = np.meshgrid(AXIS, AXIS, AXIS, indexing="ij")
FITTED = 2.25  # the level the silhouette fit would pick on a foamy ball: the middle of its interior's density


def foamy_ball(fitted: float = FITTED, seed: int = 0) -> np.ndarray:
    """Density [R, R, R] of a ball (radius 0.6) whose density inside is smooth noise between 1.6 and 2.9 (so
    ``fitted`` = 2.25 cuts through it as the silhouette fit did: most rays still meet a density above it), a soft
    edge and 0 outside; scaled by ``fitted / 2.25``."""
    radius = np.sqrt(X**2 + Y**2 + Z**2)
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random((RES, RES, RES)), 1.5)
    noise = (np.argsort(np.argsort(noise, axis=None)) / noise.size).reshape(noise.shape)  # its ranks: uniform in [0, 1)
    edge = np.clip((0.6 - radius) / 0.05, 0.0, 1.0)  # 1 inside, ramps to 0 over 0.05 at the surface
    return (1.6 + 1.3 * noise) * edge * (fitted / FITTED)


def torus(major: float = 0.5, minor: float = 0.2) -> np.ndarray:
    """Density [R, R, R] of a solid torus around Z: 10 inside, a soft edge, 0 outside."""
    ring = np.sqrt((np.sqrt(X**2 + Y**2) - major) ** 2 + Z**2)
    return 10.0 / (1.0 + np.exp((ring - minor) / 0.02))


def surface_euler(volume: np.ndarray, level: float) -> int:
    mesh = mesh_from_volume(volume.copy(), 1.0, level)
    largest = max(mesh.split(only_watertight=False), key=lambda piece: len(piece.faces))
    return topology(trimesh.Trimesh(largest.vertices, largest.faces))["euler_characteristic"]


def test_a_level_inside_the_interior_density_foams_and_the_stable_level_gives_a_ball():
    volume = foamy_ball()
    assert surface_euler(volume, FITTED) < 0, "the test field must foam at the fitted level, or it tests nothing"
    level = stable_topology_level(volume, FITTED)
    assert solid_topology(volume, level) == (1, 1)
    assert surface_euler(volume, level) == 2
    # the surface stays where the shell is: the ball's radius within a voxel
    mesh = mesh_from_volume(volume.copy(), 1.0, level)
    assert np.linalg.norm(mesh.vertices, axis=1).max() == pytest.approx(0.6, abs=2.0 / (RES - 1))


@pytest.mark.parametrize("seed", [1, 2])
def test_the_stable_level_holds_for_other_foams(seed):
    volume = foamy_ball(seed=seed)
    assert surface_euler(volume, stable_topology_level(volume, FITTED)) == 2


@pytest.mark.parametrize("fitted", [2.0, 5.0, 8.0])
def test_a_sound_field_keeps_its_fitted_level_and_a_torus_keeps_its_hole(fitted):
    volume = torus()
    assert solid_topology(volume, fitted) == (0, 0)
    assert stable_topology_level(volume, fitted) == fitted
    assert surface_euler(volume, fitted) == 0


def test_solid_topology_counts_handles_and_ignores_pockets_and_small_pieces():
    ball = (np.sqrt(X**2 + Y**2 + Z**2) < 0.5).astype(float)
    hollow = ball * (np.sqrt(X**2 + Y**2 + Z**2) > 0.2)  # a pocket: filled, still a ball
    floater = hollow + (np.sqrt((X - 0.8) ** 2 + Y**2 + Z**2) < 0.08)  # a small second piece: ignored
    assert solid_topology(floater, 0.5) == (1, 1)
    assert solid_topology(torus(), 5.0) == (0, 0)
    two_rings = np.maximum(torus(0.35, 0.12), np.roll(torus(0.35, 0.12), 22, axis=0))  # overlapping: genus 2
    assert solid_topology(two_rings, 5.0) == (-1, -1)
    assert solid_topology(np.zeros((8, 8, 8)), 0.5) == (0, 0)


def test_silhouette_threshold_picks_the_level_of_the_opacity_outline():
    maxima = np.tile(np.linspace(0.0, 10.0, 32), (1, 32, 1)).astype(np.float32)  # [1, 32, 32], rising left->right
    opacity = torch.from_numpy((maxima > 4.0).astype(np.float32))
    level = silhouette_threshold(torch.from_numpy(maxima), opacity)
    assert ((maxima > level) == (maxima > 4.0)).all()


@pytest.mark.parametrize("sequence, expected_rung", [
    ([(-21, -19), (1, 1), (1, 1), (1, 1), (0, 0)], 2),  # the first plateau of three from the top, one rung in
    ([(1, 1), (1, 1), (1, 1), (0, 0)], 0),  # stable at the fitted level: kept
    ([(-21, -19), (1, 1), (0, -1), (0, 1), (-3, -3), (-2, 1), (0, 1), (1, 1), (0, 0)], 1),  # no plateau: the
    # highest agreeing level with the fewest handles (a cone run whose rim skirt opened and closed a handle)
    ([(-4, -4), (0, 1), (-2, -2), (1, 0), (-1, 0)], 2),  # no plateau; of the agreeing rungs, rung 2 has the
    # fewest handles
    # nothing agrees anywhere (a quickstart NeRF snowman, foam at every level; measured): the highest level with
    # the fewest handles by the smaller count, rung 9 (-10 / -12), not the fitted level's -225 / -256
    ([(-225, -256), (-257, -254), (-278, -261), (-267, -226), (-239, -186), (-174, -147), (-148, -99), (-94, -60),
      (-34, -26), (-10, -12), (-12, -9), (-16, -9), (-16, -12), (-21, -16), (-17, -20), (-17, -26)], 9),
])
def test_stable_topology_level_without_a_plateau_takes_the_fewest_handles(monkeypatch, sequence, expected_rung):
    ladder = np.geomspace(4.0, 1.0, 16)
    padded = sequence + [(5, 6)] * (16 - len(sequence))  # the rungs below disagree: never chosen

    def scripted(volume, level):
        return padded[int(np.argmin(np.abs(ladder - level)))]

    monkeypatch.setattr(scene_export, "solid_topology", scripted)
    level = scene_export.stable_topology_level(np.full((4, 4, 4), 10.0), 4.0, lowest_fraction=0.25)
    assert level == pytest.approx(ladder[expected_rung])
