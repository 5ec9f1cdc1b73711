import os

import pytest
import torch

os.environ.setdefault("AUDITNN_NO_PROGRESS", "1")
os.environ.setdefault("COLUMNS", "120")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits_base():
    from auditnn.data.sources import load_source

    return load_source("digits")
