"""Multiresolution hash-grid encoding (Instant-NGP, Mueller et al. 2022).

Level ``l`` is a grid of resolution ``R_l = floor(base_resolution * per_level_scale ** l)`` cells per axis,
so it has ``(R_l + 1) ** 3`` vertices. Each vertex owns ``features_per_level`` trainable numbers, looked up

* densely (``i + j (R+1) + k (R+1)^2``) when all vertices fit in ``2 ** log2_hashmap_size`` entries, or
* through the spatial hash ``(i * 1 ^ j * 2654435761 ^ k * 805459861) mod 2 ** log2_hashmap_size`` otherwise.

A point's features at a level are the trilinear interpolation of its cell's 8 vertex features; the output
concatenates the levels, level-major: ``[l0 f0, l0 f1, l1 f0, ...]``.

``forward(points, active_levels=n)`` keeps only the first ``n`` levels (threestudio's ProgressiveBandHashGrid):
the other levels' features are multiplied by 0, on either backend's output, so they are 0 and their table
entries get no gradient.

The pure-torch path stores all levels in one flat table (level ``l`` starts at ``level_offsets[l]``) so one
gather serves every level. With ``backend='auto'`` and both tiny-cuda-nn and a CUDA device present, the
encoding is ``tinycudann.Encoding`` instead. The two backends lay out their parameters differently, so a
checkpoint from one does not load into the other.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from dreamengine.core.backends import optional_import, resolve_backend
from dreamengine.errors import ConfigError

HASH_PRIMES = (1, 2654435761, 805459861)


def _wrapped(value: int, dtype: torch.dtype) -> int:
    """``value`` as the signed integer of ``dtype``'s width with the same low bits (2654435761 -> -1640531535 in
    int32), so that products in that dtype keep the low bits of the uint32 products Instant-NGP hashes with."""
    bits = torch.iinfo(dtype).bits
    value %= 2**bits
    return value - 2**bits if value >= 2 ** (bits - 1) else value


def per_level_scale_for(base_resolution: int, max_resolution: int, num_levels: int) -> float:
    """The growth factor that takes ``base_resolution`` to ``max_resolution`` in ``num_levels`` levels."""
    if num_levels < 2:
        return 1.0
    return math.exp(math.log(max_resolution / base_resolution) / (num_levels - 1))


class HashGridEncoding(nn.Module):
    """Points in [0, 1]^3, [N, 3] -> features [N, num_levels * features_per_level].

    Points outside the unit cube are clamped onto it. ``backend`` is 'auto' (tiny-cuda-nn when it imports and
    CUDA is available, else torch), 'torch', or 'cuda' (tiny-cuda-nn, an error without it).
    """

    def __init__(self, num_levels: int = 16, features_per_level: int = 2, log2_hashmap_size: int = 19,
                 base_resolution: int = 16, per_level_scale: float = 1.447269237440378,
                 backend: str = "auto", init_scale: float = 1e-4) -> None:
        super().__init__()
        if num_levels < 1 or features_per_level < 1 or base_resolution < 1:
            raise ConfigError("hash grid num_levels, features_per_level and base_resolution must be >= 1, "
                              f"got {num_levels}, {features_per_level}, {base_resolution}")
        if not 4 <= log2_hashmap_size <= 30:
            raise ConfigError(f"hash grid log2_hashmap_size must be in [4, 30], got {log2_hashmap_size}")
        if per_level_scale < 1.0:
            raise ConfigError(f"hash grid per_level_scale must be >= 1, got {per_level_scale}")
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.base_resolution = base_resolution
        self.per_level_scale = per_level_scale
        self.output_dim = num_levels * features_per_level
        self.backend = self._pick_backend(backend)

        if self.backend == "cuda":
            self.tcnn_encoding = self._build_tcnn()
            return

        table_size = 2 ** log2_hashmap_size
        resolutions = [math.floor(base_resolution * per_level_scale**level) for level in range(num_levels)]
        dense = [(res + 1) ** 3 <= table_size for res in resolutions]
        sizes = [(res + 1) ** 3 if fits else table_size for res, fits in zip(resolutions, dense, strict=True)]
        offsets = [0]
        for size in sizes[:-1]:
            offsets.append(offsets[-1] + size)
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.long), persistent=False)
        self.register_buffer("dense_levels", torch.tensor(dense), persistent=False)
        self.register_buffer("level_offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self.register_buffer("level_sizes", torch.tensor(sizes, dtype=torch.long), persistent=False)
        # Dense levels are a prefix: resolutions only grow with the level.
        self.num_dense_levels = sum(dense)
        # the index arithmetic in int32 where every row fits (level_indices: 1.6x faster than in int64)
        self.index_dtype = torch.int32 if sum(sizes) < 2**31 else torch.int64
        table = torch.empty(sum(sizes), features_per_level).uniform_(-init_scale, init_scale)
        self.table = nn.Parameter(table)  # [sum of level sizes, F]

    def _pick_backend(self, backend: str) -> str:
        device = "cuda" if torch.cuda.is_available() else "cpu"  # the module moves to its device after construction
        return resolve_backend(backend, device, component="encoding", module="tinycudann",
                               install="build tiny-cuda-nn's torch bindings (tinycudann) from its source repository")

    def _build_tcnn(self) -> nn.Module:
        tcnn = optional_import("tinycudann")
        config = {"otype": "HashGrid", "n_levels": self.num_levels,
                  "n_features_per_level": self.features_per_level,
                  "log2_hashmap_size": self.log2_hashmap_size, "base_resolution": self.base_resolution,
                  "per_level_scale": self.per_level_scale}
        return tcnn.Encoding(n_input_dims=3, encoding_config=config)

    def level_indices(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Table rows and trilinear weights of each point's 8 cell corners at every level (torch backend), in
        the point-major order the lookup's gradient accumulates in: :meth:`corner_indices` transposed.

        Corner ``c = 4 di + 2 dj + dk`` is the vertex ``(i + di, j + dj, k + dk)`` of the point's cell.

        Args:
            points: [N, 3] in [0, 1] (clamped).
        Returns:
            rows: [N, L, 8] long, indices into ``self.table`` (already offset to the level's block).
            weights: [N, L, 8], the trilinear weights (they sum to 1 over the corners); differentiable in the
                points.
        """
        rows, weights = self.corner_indices(points)
        return _point_major(rows), _point_major(weights)

    def corner_indices(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`level_indices` in corner-major order: rows [L, 8, N] long and weights [L, 8, N].

        Both the rows and the weights are built per axis and combined by broadcasting, which keeps the
        integer work at [L, 3, 2, N] instead of [L, 8, 3, N]. The points are the last (contiguous) dimension:
        torch's elementwise kernels run their inner loop along it, and with the corner or axis dimensions
        (length 2) innermost they ran 3-8x slower per element. The interpolation reads this order directly;
        only the table's gradient needs the point-major order (the transpose is done there, so renders without
        gradients skip it). The integer work is done in int32 when the table has fewer than 2^31 rows (always,
        in practice), 1.6x faster than in int64; the hash products then wrap around modulo 2^32, which leaves
        their low bits, the only ones the table-size mask keeps, as Instant-NGP's uint32 arithmetic has them
        (tests/scenes/test_encoding.py checks against Python integers). The rows are returned as int64: torch's
        lookup and its backward (``index_add_``) are much slower with int32 indices.
        """
        n, levels, dense = points.shape[0], self.num_levels, self.num_dense_levels
        index = self.index_dtype
        res = self.resolutions.to(points.dtype)  # [L]
        scaled = points.clamp(0.0, 1.0).T[None] * res[:, None, None]  # [L, 3, N]
        # Lower cell corner; a point exactly on the far face stays in the last cell with frac = 1.
        cell = torch.minimum(scaled.detach().floor(), (res - 1.0)[:, None, None])
        frac = scaled - cell  # [L, 3, N]
        lower = cell.to(index)
        axis_vertex = torch.stack([lower, lower + 1], dim=2)  # [L, 3, 2, N]: the two vertex indices per axis

        offsets = self.level_offsets.to(index)
        blocks = []  # per level block: rows [levels of the block, 2, 2, 2, N]
        if dense:
            side = (self.resolutions[:dense] + 1).to(index)  # vertices per axis of each dense level
            dense_mult = torch.stack([torch.ones_like(side), side, side * side], dim=-1)  # [D, 3]
            terms = axis_vertex[:dense] * dense_mult[:, :, None, None]  # [D, 3, 2, N]
            k_terms = terms[:, 2] + offsets[:dense, None, None]  # [D, 2, N], the level's offset folded in
            blocks.append(terms[:, 0, :, None, None] + terms[:, 1, None, :, None] + k_terms[:, None, None])
        if dense < levels:
            primes = torch.tensor([_wrapped(prime, index) for prime in HASH_PRIMES], dtype=index,
                                  device=points.device)
            # the table-size mask distributes over XOR: mask each axis's term before combining
            terms = (axis_vertex[dense:] * primes[None, :, None, None]) & (2**self.log2_hashmap_size - 1)
            hashed = terms[:, 0, :, None, None] ^ terms[:, 1, None, :, None] ^ terms[:, 2, None, None]
            blocks.append(hashed + offsets[dense:, None, None, None, None])
        corner_rows = torch.cat(blocks) if len(blocks) > 1 else blocks[0]  # [L, 2, 2, 2, N]

        axis_weight = torch.stack([1.0 - frac, frac], dim=2)  # [L, 3, 2, N]
        weights = (axis_weight[:, 0, :, None, None] * axis_weight[:, 1, None, :, None]
                   * axis_weight[:, 2, None, None])  # [L, 2, 2, 2, N]
        return corner_rows.view(levels, 8, n).long(), weights.view(levels, 8, n)

    def forward(self, points: Tensor, active_levels: Tensor | int | None = None) -> Tensor:
        """[N, 3] in [0, 1] -> [N, num_levels * features_per_level] (float32). With ``active_levels`` n the
        features of levels n and above are multiplied by 0 (None: every level, no multiplication)."""
        if self.backend == "cuda":
            encoded = self.tcnn_encoding(points.clamp(0.0, 1.0)).float()
        else:
            rows, weights = self.corner_indices(points)
            encoded = _InterpolateCorners.apply(self.table, rows, weights).reshape(points.shape[0], self.output_dim)
        if active_levels is None:
            return encoded
        return encoded * self.level_mask(active_levels, encoded.device)

    def level_mask(self, active_levels: Tensor | int, device: torch.device) -> Tensor:
        """[num_levels * features_per_level] float: 1 for the features of the first ``active_levels`` levels,
        else 0 (the output is level-major)."""
        level = torch.arange(self.output_dim, device=device) // self.features_per_level
        return (level < torch.as_tensor(active_levels, device=device)).float()


def _point_major(corner_major: Tensor) -> Tensor:
    """[L, 8, N] -> [N, L, 8], contiguous."""
    return corner_major.permute(2, 0, 1).contiguous()


def _sum_corners(values: Tensor) -> Tensor:
    """[L, 8, N] -> [L, N]: the sum over the 8 corners, in the order torch's ``sum(dim=2)`` over [N, L, 8, 2]
    took on the machine the quickstart's results were measured on (AVX2): the two halves added lane by lane,
    then left to right. Keeping that order keeps every earlier result bit for bit."""
    halves = values[:, :4] + values[:, 4:]
    return ((halves[:, 0] + halves[:, 1]) + halves[:, 2]) + halves[:, 3]


class _InterpolateCorners(torch.autograd.Function):
    """``sum_c weights[l, c, n] * table[rows[l, c, n]]``: table [T, F], corner-major rows and weights [L, 8, N]
    (:meth:`HashGridEncoding.corner_indices`) -> [N, L, F].

    The same numbers as ``(w[..., None] * table[rows]).sum(dim=2)`` over the point-major [N, L, 8] order with
    autograd, computed one feature column at a time so that every elementwise kernel runs along a contiguous
    block (broadcasting over the length-F last dimension made torch's kernels 2-3x slower). The table's gradient
    is accumulated with ``index_add_`` in the point-major order, as autograd's gradient of ``index_select`` over
    [N, L, 8] rows did (a row's contributions are summed in the same order, so the gradient is bit-identical).
    """

    @staticmethod
    def forward(ctx: Any, table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
        levels, _, count = rows.shape
        width = table.shape[1]
        features = table.index_select(0, rows.reshape(-1)).view(levels, 8, count, width)  # [L, 8, N, F]
        encoded = torch.empty(count, levels, width, dtype=table.dtype, device=table.device)
        for column in range(width):
            encoded[..., column] = _sum_corners(weights * features[..., column]).T
        ctx.save_for_backward(table, rows, weights)
        return encoded

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        table, rows, weights = ctx.saved_tensors  # rows and weights [L, 8, N]; grad [N, L, F]
        width = table.shape[1]
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            point_rows, point_weights = _point_major(rows), _point_major(weights)  # the accumulation's order
            per_corner = torch.empty(*point_rows.shape, width, dtype=grad.dtype, device=grad.device)  # [N, L, 8, F]
            for column in range(width):
                torch.mul(point_weights, grad[..., column, None], out=per_corner[..., column])
            grad_table = torch.zeros_like(table).index_add_(0, point_rows.reshape(-1), per_corner.view(-1, width))
        if ctx.needs_input_grad[2]:
            features = table.index_select(0, rows.reshape(-1)).view(*rows.shape, width)  # [L, 8, N, F]
            grad_weights = (features * grad.permute(1, 0, 2)[:, None]).sum(dim=-1)  # [L, 8, N]
        return grad_table, None, grad_weights
