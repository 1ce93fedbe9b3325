"""Settings for every test path (tests/, tutorials/, the doctests in mi_toolkit/); the fixtures are in
tests/conftest.py."""

import os


def pytest_configure(config):
    """Under pytest-xdist each of the workers gets one thread (torch, and the notebook kernels and subprocesses it
    starts, through ``OMP_NUM_THREADS``): two workers of two threads each on two cores slow each other down."""
    if hasattr(config, "workerinput"):
        import torch

        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
