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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--full"):
        return
    skip = pytest.mark.skip(reason="a full-length calibration run: pass --full to run it")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)
