"""The hash-grid encoding against an independent per-point, per-corner Python reference."""

from __future__ import annotations

import math

import pytest
import torch

from dreamengine.errors import ConfigError
from dreamengine.scenes.encoding import HashGridEncoding, _InterpolateCorners, per_level_scale_for


def small_encoding(**overrides: object) -> HashGridEncoding:
    # base 4, scale 2, table 2^10: levels of resolution 4, 8 (dense: 125, 729 vertices) and 16, 32 (hashed).
    settings = {"num_levels": 4, "features_per_level": 2, "log2_hashmap_size": 10, "base_resolution": 4,
                "per_level_scale": 2.0, "backend": "torch"}
    settings.update(overrides)
    torch.manual_seed(0)
    encoding = HashGridEncoding(**settings)
    with torch.no_grad():  # values large enough that interpolation errors would show
        encoding.table.uniform_(-1.0, 1.0)
    return encoding


def reference_row(level: int, vertex: tuple[int, int, int], encoding: HashGridEncoding) -> int:
    """Table row of a vertex, from the Instant-NGP definitions with Python integers."""
    resolution = math.floor(encoding.base_resolution * encoding.per_level_scale**level)
    table_size = 2**encoding.log2_hashmap_size
    offset = 0
    for previous in range(level):
        previous_res = math.floor(encoding.base_resolution * encoding.per_level_scale**previous)
        offset += min((previous_res + 1) ** 3, table_size)  # dense levels hold exactly their vertices
    i, j, k = vertex
    if (resolution + 1) ** 3 <= table_size:
        return offset + i + j * (resolution + 1) + k * (resolution + 1) ** 2
    hashed = (i * 1) ^ (j * 2654435761) ^ (k * 805459861)
    return offset + hashed % table_size


def reference_encode(encoding: HashGridEncoding, points: torch.Tensor,
                     table: torch.Tensor | None = None) -> torch.Tensor:
    """Brute-force trilinear interpolation, one point, level and corner at a time, in float64.

    ``table`` defaults to a detached copy of the encoding's table; pass one that requires grad to
    differentiate the reference.
    """
    table = encoding.table.detach().double() if table is None else table
    rows = []
    for point in points.double().tolist():
        features = []
        for level in range(encoding.num_levels):
            resolution = math.floor(encoding.base_resolution * encoding.per_level_scale**level)
            scaled = [min(max(c, 0.0), 1.0) * resolution for c in point]
            cell = [min(math.floor(s), resolution - 1) for s in scaled]
            frac = [s - c for s, c in zip(scaled, cell, strict=True)]
            value = torch.zeros(encoding.features_per_level, dtype=torch.float64)
            for di in (0, 1):
                for dj in (0, 1):
                    for dk in (0, 1):
                        weight = ((frac[0] if di else 1 - frac[0]) * (frac[1] if dj else 1 - frac[1])
                                  * (frac[2] if dk else 1 - frac[2]))
                        vertex = (cell[0] + di, cell[1] + dj, cell[2] + dk)
                        value = value + weight * table[reference_row(level, vertex, encoding)]
            features.append(value)
        rows.append(torch.cat(features))
    return torch.stack(rows)


def test_dense_level_value_at_a_vertex_is_the_table_entry() -> None:
    encoding = small_encoding()
    resolution = 4
    vertices = torch.tensor([[0, 0, 0], [1, 2, 3], [4, 4, 4], [4, 0, 2], [3, 1, 0]])
    features = encoding(vertices.float() / resolution)  # level 0 occupies columns 0:2
    for vertex, feature in zip(vertices.tolist(), features, strict=True):
        i, j, k = vertex
        expected = encoding.table[i + j * (resolution + 1) + k * (resolution + 1) ** 2]
        torch.testing.assert_close(feature[:2], expected)


def test_matches_brute_force_trilinear_interpolation_on_dense_and_hashed_levels() -> None:
    encoding = small_encoding()
    assert encoding.num_dense_levels == 2 and encoding.num_levels == 4
    generator = torch.Generator().manual_seed(1)
    points = torch.rand(40, 3, generator=generator)
    points[0] = torch.tensor([1.0, 1.0, 1.0])  # the far corner stays in the last cell
    points[1] = torch.tensor([1.3, -0.2, 0.5])  # outside: clamped onto the cube
    expected = reference_encode(encoding, points)
    torch.testing.assert_close(encoding(points).double(), expected, atol=1e-5, rtol=0)


def test_gradients_reach_exactly_the_touched_rows_with_the_interpolation_weights() -> None:
    encoding = small_encoding()
    points = torch.rand(30, 3, generator=torch.Generator().manual_seed(2))
    upstream = torch.randn(30, encoding.output_dim, generator=torch.Generator().manual_seed(3))
    (encoding(points) * upstream).sum().backward()
    table = encoding.table.detach().double().requires_grad_(True)
    (reference_encode(encoding, points, table) * upstream.double()).sum().backward()
    torch.testing.assert_close(encoding.table.grad.double(), table.grad, atol=1e-5, rtol=0)
    touched = encoding.table.grad.abs().sum(-1) > 0
    assert 0 < touched.sum() < encoding.table.shape[0]


def test_point_gradient_is_the_derivative_of_the_interpolation_inside_a_cell() -> None:
    """A moving surface point (mesh refinement with a texture field) gets the trilinear interpolation's
    derivative: central differences of the float64 reference, away from cell faces."""
    encoding = small_encoding()
    points = torch.tensor([[0.31, 0.52, 0.67], [0.11, 0.83, 0.44], [0.58, 0.27, 0.93]])
    upstream = torch.randn(3, encoding.output_dim, generator=torch.Generator().manual_seed(6))
    moving = points.clone().requires_grad_(True)
    (encoding(moving) * upstream).sum().backward()
    step = 1e-4  # far inside the finest level's cells (1/32 wide) around these points
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for axis in range(3):
        shift = torch.zeros(3, dtype=torch.float64)
        shift[axis] = step
        up = (reference_encode(encoding, points.double() + shift) * upstream.double()).sum(-1)
        down = (reference_encode(encoding, points.double() - shift) * upstream.double()).sum(-1)
        expected[:, axis] = (up - down) / (2 * step)
    torch.testing.assert_close(moving.grad.double(), expected, atol=2e-3, rtol=1e-4)


def test_interpolation_gradients_pass_gradcheck_in_float64() -> None:
    """The hand-written backward of the corner interpolation (table and weights) against numerical derivatives."""
    encoding = small_encoding()
    rows, weights = encoding.corner_indices(torch.rand(6, 3, generator=torch.Generator().manual_seed(7)))
    table = encoding.table.detach().double()[: int(rows.max()) + 1].clone().requires_grad_(True)
    corner_weights = weights.detach().double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, w: _InterpolateCorners.apply(t, rows, w), (table, corner_weights))


def test_interpolation_equals_the_autograd_formula() -> None:
    """Forward values and the table's gradient are those of ``(w[..., None] * table[rows]).sum(2)`` under
    autograd, which earlier results were computed with: the gradient bit for bit (``index_add_`` in the same
    order), the values to float32 rounding (bit for bit where torch sums the corners in the order
    ``_sum_corners`` copies, as on the AVX2 machine the quickstart's results come from)."""
    encoding = small_encoding(num_levels=6, log2_hashmap_size=12)
    points = torch.rand(5000, 3, generator=torch.Generator().manual_seed(8))
    upstream = torch.randn(5000, encoding.output_dim, generator=torch.Generator().manual_seed(9))
    rows, weights = encoding.level_indices(points)
    table = encoding.table.detach().clone().requires_grad_(True)
    formula = (weights[..., None] * table.index_select(0, rows.reshape(-1)).view(*rows.shape, 2)).sum(dim=2)
    (formula.reshape(5000, -1) * upstream).sum().backward()
    encoded = encoding(points)
    (encoded * upstream).sum().backward()
    torch.testing.assert_close(encoded, formula.reshape(5000, -1).detach(), rtol=1e-6, atol=1e-7)
    assert torch.equal(encoding.table.grad, table.grad)


def test_hashed_levels_collide_but_stay_inside_their_block() -> None:
    encoding = small_encoding(log2_hashmap_size=6, num_levels=3)  # 64 rows per level: every level hashes
    assert encoding.num_dense_levels == 0
    points = torch.rand(2000, 3, generator=torch.Generator().manual_seed(4))
    rows, weights = encoding.level_indices(points)
    for level in range(encoding.num_levels):
        start = level * 64
        level_rows = rows[:, level]
        assert level_rows.min() >= start and level_rows.max() < start + 64
    # Level 2 has 17^3 vertices sharing 64 rows: distinct vertices must collide.
    assert rows[:, 2].unique().numel() <= 64 < 17**3
    torch.testing.assert_close(weights.sum(-1), torch.ones(2000, 3))
    torch.testing.assert_close(encoding(points[:20]).double(), reference_encode(encoding, points[:20]),
                               atol=1e-5, rtol=0)


def test_int32_rows_equal_python_integer_hashes_where_the_products_overflow() -> None:
    """The default grid's finest levels (resolution up to 4096, a 2^19 table): vertex index x prime runs far past
    2^31, so the int32 products wrap; the rows must still be Instant-NGP's (Python integers, no overflow)."""
    encoding = HashGridEncoding(num_levels=16, features_per_level=2, log2_hashmap_size=19, base_resolution=16,
                                per_level_scale=per_level_scale_for(16, 4096, 16), backend="torch")
    assert encoding.index_dtype == torch.int32
    points = torch.rand(300, 3, generator=torch.Generator().manual_seed(5))
    points[0] = torch.tensor([1.0, 1.0, 1.0])  # the largest vertex indices
    rows, _ = encoding.level_indices(points)
    for level in (0, encoding.num_dense_levels, 12, 15):
        resolution = int(encoding.resolutions[level])
        for n in range(0, 300, 7):
            scaled = [min(max(c, 0.0), 1.0) * resolution for c in points[n].tolist()]
            cell = [min(math.floor(s), resolution - 1) for s in scaled]
            corners = [(cell[0] + di, cell[1] + dj, cell[2] + dk) for di in (0, 1) for dj in (0, 1) for dk in (0, 1)]
            expected = [reference_row(level, vertex, encoding) for vertex in corners]
            assert rows[n, level].tolist() == expected, (level, n)


def test_output_shape_init_scale_and_per_level_scale_helper() -> None:
    encoding = HashGridEncoding(num_levels=8, features_per_level=2, log2_hashmap_size=12, backend="torch")
    assert encoding(torch.rand(5, 3)).shape == (5, 16)
    assert encoding.table.abs().max() <= 1e-4
    scale = per_level_scale_for(16, 2048, 8)
    assert math.isclose(16 * scale**7, 2048, rel_tol=1e-9)


def test_bad_settings_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="backend"):
        HashGridEncoding(backend="tcnn")
    with pytest.raises(ConfigError, match="log2_hashmap_size"):
        HashGridEncoding(log2_hashmap_size=40, backend="torch")


def _tcnn_usable() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


@pytest.mark.skipif(_tcnn_usable(), reason="tiny-cuda-nn and CUDA are present, so backend='cuda' is valid")
def test_cuda_backend_without_tinycudann_says_how_to_fix_it() -> None:
    with pytest.raises(ConfigError, match="tiny-cuda-nn"):
        HashGridEncoding(backend="cuda")
