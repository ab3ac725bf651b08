"""PixelBank: the exact toy teachers' posterior, read only where it can be nonzero, equals the dense float64 one."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamengine.teachers.pixel_bank import PixelBank, _distinct_rows
from dreamengine.teachers.toyworld import scaled_linear_alphas_cumprod

ALPHAS = scaled_linear_alphas_cumprod()


def dense_posterior(rows: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, log_prior: torch.Tensor,
                    table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain float64 computation, a loop over the views: (weights [G, C], mean [B, D])."""
    bank = rows.double()
    views = table.shape[1]
    distance = torch.zeros_like(log_prior)
    for k in range(views):
        zk, ak = z[k::views], alpha[k::views]  # [G, D], [G]
        squared = ((zk[:, None, :] - ak.sqrt()[:, None, None] * bank[table[:, k]][None]) ** 2).sum(-1)  # [G, C]
        distance += (squared - (zk * zk).sum(-1, keepdim=True)) / (2.0 * (1.0 - ak))[:, None]
    weights = torch.softmax(log_prior - distance, dim=1)
    mean = torch.stack([weights @ bank[table[:, k]] for k in range(views)], dim=1).reshape(z.shape[0], -1)
    return weights, mean


def noised_bank_rows(rows: torch.Tensor, picks: list[int], timesteps: list[int], seed: int) -> tuple:
    """z = sqrt(a) x + sqrt(1 - a) eps for bank rows ``picks`` (float32, as renders are), and alpha [B] float64."""
    generator = torch.Generator().manual_seed(seed)
    alpha = ALPHAS[torch.tensor(timesteps)]
    clean = rows[torch.tensor(picks)].double()
    noise = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    z = (alpha.sqrt()[:, None] * clean + (1.0 - alpha).sqrt()[:, None] * noise).float().double()
    return z, alpha


def random_bank(count: int, dim: int, seed: int) -> torch.Tensor:
    """Blocky images in [-1, 1], as renders are: a few flat colors, so some rows are near each other."""
    generator = torch.Generator().manual_seed(seed)
    palette = torch.rand(6, generator=generator) * 2.0 - 1.0
    labels = torch.randint(0, 6, (count, dim // 4), generator=generator)
    return palette[labels].repeat_interleave(4, dim=1).float()


def with_background(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """``rows`` with a random half of the columns set to one value each, the same in every row (the pixels that
    are background in every bank image)."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randperm(rows.shape[1], generator=generator)[: rows.shape[1] // 2]
    rows = rows.clone()
    rows[:, shared] = (torch.rand(shared.numel(), generator=generator) * 2.0 - 1.0).float()
    return rows


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), timestep=st.integers(0, 999), count=st.integers(2, 60),
       zero_prior=st.booleans(), background=st.booleans())
def test_posterior_equals_the_dense_float64_softmax(seed, timestep, count, zero_prior, background):
    rows = random_bank(count, 48, seed)
    if background:  # the float32 pass reads only the columns where the images differ
        rows = with_background(rows, seed)
    bank = PixelBank(rows)
    z, alpha = noised_bank_rows(rows, [0, count - 1], [timestep, max(timestep - 7, 0)], seed)
    generator = torch.Generator().manual_seed(seed + 1)
    log_prior = torch.randn(2, count, generator=generator, dtype=torch.float64) * 30.0
    if zero_prior:  # a prompt that selects some candidates only: the others have log prior -inf
        log_prior[0, count // 2:] = -torch.inf
    table = torch.arange(count)[:, None]
    expected_weights, expected_mean = dense_posterior(rows, z, alpha, log_prior, table)
    posterior = bank.posterior(z, alpha, log_prior)
    assert torch.equal(posterior.weights.eq(0), expected_weights.eq(0))  # the same exact zeros
    torch.testing.assert_close(posterior.weights, expected_weights, rtol=1e-9, atol=1e-300)
    torch.testing.assert_close(posterior.mean, expected_mean, rtol=1e-9, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), timestep=st.integers(0, 999))
def test_grouped_posterior_sums_the_views_of_each_set(seed, timestep):
    rows = random_bank(24, 32, seed)
    bank = PixelBank(rows)
    generator = torch.Generator().manual_seed(seed)
    table = torch.stack([torch.randperm(24, generator=generator)[:10] for _ in range(3)], dim=1)  # [10 sets, 3]
    picks = table[seed % 10].tolist() + table[(seed + 3) % 10].tolist()  # two groups of 3 views, from sets
    z, alpha = noised_bank_rows(rows, picks, [timestep] * 3 + [max(timestep - 50, 0)] * 3, seed)
    log_prior = torch.randn(2, 10, generator=generator, dtype=torch.float64) * 5.0
    expected_weights, expected_mean = dense_posterior(rows, z, alpha, log_prior, table)
    posterior = bank.posterior(z, alpha, log_prior, table)
    assert torch.equal(posterior.weights.eq(0), expected_weights.eq(0))
    torch.testing.assert_close(posterior.weights, expected_weights, rtol=1e-9, atol=1e-300)
    torch.testing.assert_close(posterior.mean, expected_mean, rtol=1e-9, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), timestep=st.integers(0, 999), copies=st.integers(1, 3),
       distinct=st.integers(1, 2))
def test_guidance_copies_of_one_batch_share_the_product_and_keep_the_posterior(seed, timestep, copies, distinct):
    """Classifier-free guidance scores copies of the same noised renders under different prompts: the bank is read
    once per distinct render, and each copy's posterior is still the dense one under its own prior."""
    rows = random_bank(30, 48, seed)
    bank = PixelBank(rows)
    z, alpha = noised_bank_rows(rows, [3, 17][:distinct], [timestep, max(timestep - 11, 0)][:distinct], seed)
    z, alpha = z.repeat(copies, 1), alpha.repeat(copies)
    first, which = _distinct_rows(z.float())
    assert torch.equal(first, z[:distinct].float()) and torch.equal(first[which], z.float())
    log_prior = torch.randn(z.shape[0], 30, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 30.0
    expected_weights, expected_mean = dense_posterior(rows, z, alpha, log_prior, torch.arange(30)[:, None])
    posterior = bank.posterior(z, alpha, log_prior)
    assert torch.equal(posterior.weights.eq(0), expected_weights.eq(0))
    torch.testing.assert_close(posterior.weights, expected_weights, rtol=1e-9, atol=1e-300)
    torch.testing.assert_close(posterior.mean, expected_mean, rtol=1e-9, atol=1e-12)
    different = z.float().clone()
    different[-1, 0] += 1.0  # not copies any more: every row keeps its own product
    assert _distinct_rows(different)[0].shape[0] == z.shape[0]


def test_float32_estimate_stays_within_its_bound_where_rounding_is_worst():
    # all terms of one sign and of the largest magnitude: the float32 sum's error grows with every term
    generator = torch.Generator().manual_seed(0)
    dim = 6912
    rows = (1.0 - 1e-3 * torch.rand(64, dim, generator=generator)).float()
    bank = PixelBank(rows)
    z = (3.0 + torch.rand(4, dim, generator=generator, dtype=torch.float64)).float().double()
    alpha = ALPHAS[torch.tensor([0, 20, 500, 999])]
    estimate, bound = bank.estimated_distances(z, alpha)
    dots = z @ rows.double().T  # float64: float32 products are exact in it, the sum rounds ~2^29 times finer
    exact = (alpha[:, None] * bank.sqnorm[None] - 2.0 * alpha.sqrt()[:, None] * dots) / (2.0 * (1.0 - alpha))[:, None]
    error = (estimate - exact).abs()
    assert bool((error <= bound).all())
    assert float(error.max()) > 0.0  # the float32 pass does round


def test_float32_pass_reads_the_varying_columns_and_stays_within_its_bound():
    generator = torch.Generator().manual_seed(1)
    rows = with_background((1.0 - 1e-3 * torch.rand(64, 2048, generator=generator)).float(), seed=1)
    bank = PixelBank(rows)
    assert bank._varying_rows.shape == (64, 1024)  # half the columns are the same in every row
    z = (3.0 + torch.rand(4, 2048, generator=generator, dtype=torch.float64)).float().double()
    alpha = ALPHAS[torch.tensor([0, 20, 500, 999])]
    estimate, bound = bank.estimated_distances(z, alpha)
    dots = z @ rows.double().T
    exact = (alpha[:, None] * bank.sqnorm[None] - 2.0 * alpha.sqrt()[:, None] * dots) / (2.0 * (1.0 - alpha))[:, None]
    assert bool(((estimate - exact).abs() <= bound).all())


def test_sharp_posterior_reads_a_few_rows_only():
    rows = random_bank(400, 3072, seed=3)
    bank = PixelBank(rows)
    z, alpha = noised_bank_rows(rows, [5, 77], [20, 20], seed=3)
    posterior = bank.posterior(z, alpha, torch.zeros(2, 400, dtype=torch.float64))
    nonzero = int(posterior.weights.ne(0).any(dim=0).sum())
    assert nonzero <= posterior.rows_read < 40  # every nonzero candidate, and not much more


def test_bank_rows_must_be_float32():
    import pytest

    with pytest.raises(ValueError, match="float32"):
        PixelBank(torch.zeros(3, 4, dtype=torch.float64))
