import os

import pytest
import torch

os.environ.setdefault("AUDITNN_NO_PROGRESS", "1")
os.environ.setdefault("COLUMNS", "120")
torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Models the CLI trains are cached: keep the tests' cache out of the user's home."""
    os.environ["AUDITNN_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def digits_base():
    from auditnn.data.sources import load_source

    return load_source("digits")
