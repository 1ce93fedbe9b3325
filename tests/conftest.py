import pytest
import torch


@pytest.fixture(scope="session")
def device() -> str:
    """CPU always; the CUDA path is exercised where a GPU is present."""
    return "cuda" if torch.cuda.is_available() else "cpu"
