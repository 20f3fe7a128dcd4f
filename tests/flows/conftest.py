"""One Prefect test server for the whole session (entering it costs 10-25 s)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from configs.load import load_config
from configs.schema import Config


@pytest.fixture(autouse=True, scope="session")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny_config(results: Path, symbols: list[str], source: str = "synthetic", **training) -> Config:
    """A model and history small enough to train in about a second."""
    return load_config(overrides={
        "data": {"source": source, "days": 420},
        "windows": {"seq_len": 20},
        "model": {"d_model": 8, "n_layers": 1, "d_state": 4},
        "training": {"epochs": 3, "batch_size": 32, "patience": 5, "seed": 7, **training},
        "run": {"symbols": symbols, "parallel": 2, "results_dir": str(results)},
    })
