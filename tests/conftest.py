"""Suite-wide options: ``--full`` also runs the full-length calibration runs (marker ``full``).

The default suite (the README's test command, what CI runs) stays within about 10 minutes on a 2-core machine;
the full-length runs of every toy system take about as long again, so they run on request:
``python -m pytest -q --full -m full`` (or ``python bench/systems.py``, which measures the same runs).
"""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (the README runs ``-n 2 --dist worksteal``) every worker, and every process it starts,
    uses one thread: two workers on two cores instead of four threads fighting over them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--full", action="store_true", default=False,
                     help="also run the full-length calibration runs (marker 'full'; ~10 minutes on 2 cores)")


# Rough seconds on the 2-core machine of the longest tests (nodeid prefixes); any other test marked ``slow``
# counts as SLOW_DEFAULT. Only the order of the suite depends on these numbers (see long_tests_first).
LONG_TESTS = {
    "tests/test_end_to_end.py::test_generate_export_eval_red_cube": 100,
    "tests/systems/test_systems.py::test_sigkill_in_either_stage_then_resume_is_bit_identical": 90,
    "tests/test_batch.py::test_ray_runs_a_batch_of_three": 80,
    "tests/test_end_to_end.py::test_gaussians_generate_a_red_cube_with_a_valid_glb_and_splat_file": 60,
    "tests/test_batch.py::test_a_killed_worker_is_retried_and_the_batch_completes": 50,
    "tests/test_end_to_end.py::test_sigterm_then_resume_matches_uninterrupted_run": 50,
}
SLOW_DEFAULT = 25


def expected_seconds(item: pytest.Item) -> float:
    if item.get_closest_marker("skip"):
        return 0.0
    for prefix, seconds in LONG_TESTS.items():
        if item.nodeid.startswith(prefix):
            return seconds
    return SLOW_DEFAULT if "slow" in item.keywords else 0.0


def long_tests_first(items: list[pytest.Item]) -> None:
    """Reorder ``items`` in place so that the long tests start first on both workers of ``-n 2``.

    ``--dist worksteal`` hands the first half of the collection to one worker and the second half to the other,
    and later moves tests from the end of a worker's queue to an idle one; a long test left at the end of a queue
    makes the other worker wait. So the long tests (longest first) are dealt to the two halves, each half starting
    with its share, and the short tests fill the rest (the worker that finishes first steals from them)."""
    long = sorted((item for item in items if expected_seconds(item) > 0), key=expected_seconds, reverse=True)
    if not long:
        return
    halves: tuple[list[pytest.Item], list[pytest.Item]] = ([], [])
    totals = [0.0, 0.0]
    for item in long:  # longest first onto the half with less work so far
        side = 0 if totals[0] <= totals[1] else 1
        halves[side].append(item)
        totals[side] += expected_seconds(item)
    chosen = {id(item) for item in long}
    short = [item for item in items if id(item) not in chosen]
    fill = max(0, len(items) // 2 - len(halves[0]))  # the second half starts at len(items) // 2
    items[:] = [*halves[0], *short[:fill], *halves[1], *short[fill:]]


@pytest.hookimpl(trylast=True)  # after -m / -k deselection: the halves are halves of what runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--full"):
        skip = pytest.mark.skip(reason="a full-length calibration run: pass --full to run it")
        for item in items:
            if "full" in item.keywords:
                item.add_marker(skip)
    long_tests_first(items)
