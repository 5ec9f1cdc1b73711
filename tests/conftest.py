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


@pytest.fixture(scope="session")
def digits_model(digits_base):
    """A small CNN (with BatchNorm) trained for two epochs: 59 of its 100 test images right, easy to attack."""
    from auditnn.data.controlled import stratified_split
    from auditnn.models import PixelModel, build_model
    from auditnn.train import TrainConfig, fit

    train, test = stratified_split(digits_base, 10, seed=0)
    torch.manual_seed(0)
    model = PixelModel(build_model("cnn", 1, 28, 10, width=8), [0.1], [0.25])
    fit(model, train.images, train.labels, TrainConfig(epochs=2), device=torch.device("cpu"))
    return model.eval(), test.images, test.labels
