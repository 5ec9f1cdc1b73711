"""models/features.py: the penultimate features times the classifier's weight plus its bias are the logits, a named
layer's output is a manual forward of the network's prefix, and bad layers are refused with the allowed names."""

import pytest
import torch
import torch.nn as nn

from auditnn.data.stream import TensorStore
from auditnn.errors import AuditError
from auditnn.models.features import classifier_layer, embed, embed_with_logits, named_layer
from auditnn.models.load import PixelModel
from auditnn.models.zoo import build_model


def _model(name: str, channels: int = 1, size: int = 12, classes: int = 4) -> PixelModel:
    torch.manual_seed(0)
    return PixelModel(build_model(name, channels, size, classes), [0.3] * channels, [0.2] * channels)


def _images(n: int = 10, channels: int = 1, size: int = 12) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_penultimate_features_times_the_classifier_give_the_logits(name):
    model, images = _model(name), _images()
    model.train()  # embed reads in eval mode and leaves the mode as it found it
    features, logits = embed_with_logits(model, images, batch_size=3)
    assert model.training
    layer_name, layer = classifier_layer(model, 4)
    assert layer_name == ("net.3" if name == "mlp" else "net.12")
    assert features.shape == (10, layer.in_features)
    by_hand = features @ layer.weight.detach().T + layer.bias.detach()
    model.eval()
    with torch.no_grad():
        direct = model(images)
    torch.testing.assert_close(by_hand, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, direct, rtol=1e-5, atol=1e-5)


def test_a_named_layer_is_the_output_of_the_networks_prefix_flattened():
    model, images = _model("cnn"), _images()
    model.eval()
    with torch.no_grad():
        prefix = model.net[:5]((images - model.mean) / model.std).flatten(1)  # after the first conv block's pool
    for name in ("4", "net.4"):  # the network's own name, or the wrapper's
        torch.testing.assert_close(embed(model, TensorStore(images), layer=name, batch_size=4), prefix)


def test_a_batch_size_does_not_change_the_features():
    model, images = _model("cnn"), _images(n=11)
    torch.testing.assert_close(embed(model, images, batch_size=2), embed(model, images, batch_size=64))


def test_a_layer_the_model_does_not_have_is_refused_with_names_it_has():
    with pytest.raises(AuditError, match=r"layer 'fc9' is not in the model; allowed: a layer name such as .*net\.12"):
        named_layer(_model("cnn"), "fc9")


def test_a_model_without_a_classifier_layer_is_refused():
    conv_only = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(AuditError, match="no nn.Linear layer with 4 outputs.*allowed: models built by auditnn"):
        classifier_layer(conv_only, 4)
    with pytest.raises(AuditError, match="no nn.Linear layer with 5 outputs"):
        classifier_layer(_model("mlp"), 5)


def test_a_scripted_model_hides_its_layers():
    scripted = torch.jit.trace(_model("mlp").eval(), _images())
    with pytest.raises(AuditError, match="no nn.Linear layer"):
        embed(scripted, _images())


def test_a_layer_that_runs_twice_in_one_forward_is_refused():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.shared(self.shared(x.flatten(1))))

    with pytest.raises(AuditError, match="layer 'shared' ran 2 times"):
        embed(Twice(), torch.rand(3, 1, 2, 2), layer="shared")
