"""PixelBank: the exact toy teachers' bank of images and the posterior over it, read only where it is nonzero.

The exact toy teachers (:mod:`~dreamengine.teachers.toyworld`, its multi-view and image-conditioned versions)
weight every bank image x_s by

    log w_s = log p_s - d_s,    d_s = (a |x_s|^2 - 2 sqrt(a) z.x_s) / (2 (1 - a))

(|z - sqrt(a) x_s|^2 / (2 (1 - a)) without |z|^2, which is the same for every candidate and cancels in the
softmax). The dot products z.x_s over the whole bank were the teachers' main cost: a float64 pass over
N x D numbers (7728 x 6912 for the quickstart's 48 px bank) per call. Most of the resulting weights are exact
zeros in float64: softmax underflows (exp(x) is 0 for x < -745.2) wherever a candidate's log-weight is more than
~745 below the best one's, which leaves ~10 candidates of 7728 at small t and ~1000 at t ~ T.

:meth:`PixelBank.posterior` finds those candidates first with a float32 pass (half the memory traffic) and a
rigorous bound on its rounding error, then computes the float64 log-weights of the candidates that can be nonzero
only. The weights it returns are the full float64 softmax's: the same nonzero entries, equal to float64
rounding (the denominator is summed over fewer zeros, in another order), and exactly zero elsewhere.

The float32 pass reads only the columns where the bank images differ: a pixel that is background in every image
(half of the quickstart bank's, its corners and edges) adds the same z_i x_i to every dot product, computed once
in float64. That halves the pass's memory traffic (12 -> 7 ms for the quickstart's bank on 2 cores) for a copy of
the varying columns (104 MB for the quickstart's 213 MB bank).

Bound: the bank holds float32 numbers (the renders are float32), z is rounded to float32 (|dz_i| <= u |z_i|,
u = 2^-24), and a float32 dot product of length D is within gamma_D sum_i |z_i x_i| <= gamma_D |z| |x| of the
exact one in any summation order (gamma_D = D u / (1 - D u); Higham, Accuracy and Stability of Numerical
Algorithms, 2nd ed., section 3.1). A candidate whose log-weight, even raised by its bound, is more than
:data:`UNDERFLOW_NATS` below the best candidate's lowered by its bound, has a float64 weight of exactly zero.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

# exp(x) underflows to exactly 0.0 in float64 for x < -745.13; the margin covers float64 rounding of the logits.
UNDERFLOW_NATS = 750.0
FLOAT32_UNIT_ROUNDOFF = 2.0**-24


class Posterior(NamedTuple):
    """The exact posterior over a bank's candidates and its mean image per batch row."""

    weights: Float[Tensor, "G C"]  # float64, exactly zero where the softmax underflows
    mean: Float[Tensor, "B D"]  # float64: sum over candidates of weight x (the row's view of) the candidate
    rows_read: int  # bank rows read in float64: those of the candidates whose weight can be nonzero


class PixelBank:
    """Bank images as rows [N, D] (float32, in [-1, 1]) and the exact posterior over them.

    Args:
        rows: [N, D] float32 images, flattened (3 x res x res).
    """

    def __init__(self, rows: Float[Tensor, "N D"]) -> None:
        if rows.dtype != torch.float32:
            raise ValueError(f"the bank rows must be float32 (the renders' own precision), got {rows.dtype}")
        self.rows = rows.contiguous()  # [N, D] float32
        self.sqnorm = rows.double().pow(2).sum(dim=1)  # [N] float64
        self.norm = self.sqnorm.sqrt()  # [N]
        unit, dim = FLOAT32_UNIT_ROUNDOFF, rows.shape[1]
        self._dot_error = dim * unit / (1.0 - dim * unit) + 2.0 * unit  # gamma_D, plus z's rounding to float32
        varying = (rows != rows[:1]).any(dim=0)  # [D]: the columns where some image differs from the first
        self._varying_columns = varying.nonzero().squeeze(1)  # [D_v]
        self._shared_columns = (~varying).nonzero().squeeze(1)  # [D - D_v]
        self._shared_values = rows[0, self._shared_columns].double()  # [D - D_v]: every image's value there
        self._varying_rows = rows[:, self._varying_columns].contiguous() if not bool(varying.all()) else self.rows
        # reused buffers for the candidates' rows: a fresh allocation of this size costs more in page faults
        # than the copy itself
        self._gathered = torch.empty(0, dim, dtype=torch.float32, device=rows.device)
        self._widened = torch.empty(0, dim, dtype=torch.float64, device=rows.device)

    def rows64(self, images: Int[Tensor, " U"]) -> Float[Tensor, "U D"]:
        """The rows ``images`` in float64 (exact: they are float32 numbers). A view into a buffer that the next
        call overwrites."""
        count = images.numel()
        if self._widened.shape[0] < count:
            size = min(max(count, self._widened.shape[0] * 3 // 2), self.rows.shape[0])
            self._gathered = torch.empty(size, self.rows.shape[1], dtype=torch.float32, device=self.rows.device)
            self._widened = torch.empty(size, self.rows.shape[1], dtype=torch.float64, device=self.rows.device)
        torch.index_select(self.rows, 0, images, out=self._gathered[:count])
        return self._widened[:count].copy_(self._gathered[:count])

    def estimated_distances(self, z: Float[Tensor, "B D"],
                            alpha: Float[Tensor, " B"]) -> tuple[Float[Tensor, "B N"], Float[Tensor, "B N"]]:
        """(d_s from float32 dot products, a bound on their distance from the float64 d_s), both [B, N] float64.
        ``z`` [B, D] float64, ``alpha`` [B] float64 (alpha-bar of each row's timestep)."""
        # Rows of z that are the same image (classifier-free guidance scores one z under two prompts) share one
        # product: the bank is read once per distinct image, and a product with one column is 20% faster.
        distinct, which = _distinct_rows(z[:, self._varying_columns].float())
        dots = (self._varying_rows @ distinct.T).T.double()[which]  # [B, N]; the faster order on a CPU
        dots = dots + (z[:, self._shared_columns] @ self._shared_values)[:, None]  # the columns all images share
        scale = alpha.sqrt() / (1.0 - alpha)  # [B]: |d d_s / d dot| = 2 sqrt(a) / (2 (1 - a))
        # the float32 part's bound over all D columns (it sums fewer terms: |z_v| |x_v| <= |z| |x|); 1.01: room
        # for the float64 rounding of the norms, of the shared columns' product and of this product
        bound = 1.01 * self._dot_error * (scale * z.norm(dim=1))[:, None] * self.norm[None]
        return _scaled(dots, self.sqnorm, alpha), bound

    def posterior(self, z: Float[Tensor, "B D"], alpha: Float[Tensor, " B"], log_prior: Float[Tensor, "G C"],
                  table: Int[Tensor, "C n"] | None = None) -> Posterior:
        """Softmax over candidates of ``log_prior - d`` and the posterior mean, float64.

        Without ``table`` a candidate is a bank row and each row of ``z`` its own group (G = B, C = N). With
        ``table`` [C, n] a candidate is a set of n bank rows, the rows of ``z`` form G = B / n groups of n views
        (views g n .. g n + n - 1), a set's d is the sum over k of view k's d to the set's k-th image, and view k's
        mean is the weighted sum of the sets' k-th images.
        """
        views = 1 if table is None else table.shape[1]
        table = torch.arange(self.rows.shape[0], device=z.device)[:, None] if table is None else table
        estimate, bound = self.estimated_distances(z, alpha)
        estimate, bound = _per_candidate(estimate, table), _per_candidate(bound, table)
        highest = log_prior - estimate + bound  # [G, C], >= the float64 log-weight
        lowest_best = (log_prior - estimate - bound).max(dim=1, keepdim=True).values  # [G, 1], <= the best one's
        needed = (highest >= lowest_best - UNDERFLOW_NATS).any(dim=0).nonzero().squeeze(1)  # [K]
        unique, position = torch.unique(table[needed], return_inverse=True)  # [U], [K, n]
        rows = self.rows64(unique)  # [U, D]
        exact = _scaled(z @ rows.T, self.sqnorm[unique], alpha)  # [B, U]
        candidate_weights = torch.softmax(log_prior[:, needed] - _per_candidate(exact, position), dim=1)  # [G, K]
        image_weights = torch.zeros(z.shape[0] // views, views, unique.numel(), dtype=torch.float64, device=z.device)
        for k in range(views):
            image_weights[:, k].index_add_(1, position[:, k], candidate_weights)
        weights = torch.zeros_like(log_prior, dtype=torch.float64)
        weights[:, needed] = candidate_weights
        return Posterior(weights, image_weights.view(z.shape[0], -1) @ rows, unique.numel())


def _distinct_rows(rows: Float[Tensor, "B D"]) -> tuple[Float[Tensor, "U D"], Int[Tensor, " B"]]:
    """(the first U rows [U, D], the index of each row among them [B]) when ``rows`` is B / U copies of its first
    U rows (the guidance batch's layout: conditional, unconditional, ... copies of the same noised renders), U as
    small as the copies allow; else (rows, 0 .. B - 1)."""
    batch = rows.shape[0]
    for copies in range(batch, 1, -1):
        if batch % copies == 0:
            first = rows[: batch // copies]
            if torch.equal(rows.view(copies, *first.shape), first.expand(copies, *first.shape)):
                return first, torch.arange(batch, device=rows.device) % first.shape[0]
    return rows, torch.arange(batch, device=rows.device)


def _scaled(dots: Float[Tensor, "B U"], sqnorm: Float[Tensor, " U"], alpha: Float[Tensor, " B"]) -> Tensor:
    """(a |x|^2 - 2 sqrt(a) z.x) / (2 (1 - a)) from the dot products z.x [B, U], float64."""
    return (alpha[:, None] * sqnorm[None] - 2.0 * alpha.sqrt()[:, None] * dots) / (2.0 * (1.0 - alpha))[:, None]


def _per_candidate(values: Float[Tensor, "B N"], table: Int[Tensor, "C n"]) -> Float[Tensor, "G C"]:
    """Per-image values [B, N] (B = G n) -> per-candidate sums [G, C]: the sum over k of view k's value at the
    candidate's k-th image."""
    views = table.shape[1]
    grouped = values.view(-1, views, values.shape[1])  # [G, n, N]
    total = grouped[:, 0, table[:, 0]]
    for k in range(1, views):
        total = total + grouped[:, k, table[:, k]]
    return total


__all__ = ["PixelBank", "Posterior", "UNDERFLOW_NATS"]
