from __future__ import annotations

import pytest
import torch
from torch import nn

from tbclf.errors import ConfigError
from tbclf.models import SimpleCNNClassifier
from tbclf.models.simple_cnn import SimpleCNN


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_parameter_count_matches_keras_arithmetic():
    # Keras-equivalent count for a 3-channel 224x224 input, all convs 'same' (as specified):
    #   convs: 3*9*16+16 = 448; 16*9*32+32 = 4,640; 32*36*32+32 = 36,896; 32*36*64+64 = 73,792
    #   4 pools: 224 -> 14, flatten 14*14*64 = 12,544; dense 12,544*64+64 = 802,880
    #   head: 64*32+32 = 2,080; 32*16+16 = 528; 16*1+1 = 17            -> total 921,281
    # The ~708k quoted for the original Keras net is this arithmetic with ONE 6x6 conv left at
    # Keras' default 'valid' padding: flatten 12*12*64 = 9,216, dense 589,888 -> 708,289.
    assert n_params(SimpleCNN(in_chans=3, image_size=224)) == 921_281
    original = SimpleCNN(in_chans=3, image_size=224, padding=["same", "same", "valid", "same"])
    assert n_params(original) == 708_289
    # our 1-channel input only changes the first conv: 2*9*16 fewer weights
    assert n_params(SimpleCNN(in_chans=1, image_size=224)) == 921_281 - 2 * 9 * 16


def test_default_layers_are_the_original_architecture():
    net = SimpleCNN()
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 32, 64]
    assert [c.kernel_size[0] for c in convs] == [3, 3, 6, 6]
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in net.modules())
    linears = [m for m in net.head if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [64, 32, 16, 1]
    # 'same' padding keeps the size through every conv (even kernels included)
    x = torch.rand(1, 1, 64, 64)
    for layer in net.features:
        before = x.shape[-1]
        x = layer(x)
        if isinstance(layer, nn.MaxPool2d):
            assert x.shape[-1] == before // 2
    assert x.shape == (1, 64, 4, 4)


@pytest.mark.parametrize("size", [32, 48, 64, 96])
def test_forward_shapes_for_several_sizes(size):
    net = SimpleCNN(image_size=size)
    assert net(torch.rand(3, 1, size, size)).shape == (3, 1)


def test_adaptive_pool_accepts_any_size_and_plain_flatten_explains_mismatch():
    net = SimpleCNN(image_size=64, adaptive_pool=2)
    for size in (32, 40, 64, 100):
        assert net(torch.rand(2, 1, size, size)).shape == (2, 1)
    plain = SimpleCNN(image_size=64)
    with pytest.raises(ValueError, match="image_size"):
        plain(torch.rand(2, 1, 32, 32))


def test_batch_norm_and_dropout_options():
    net = SimpleCNN(
        image_size=32, batch_norm=True, dropout=0.3, channels=[8, 8], kernel_sizes=[3, 5]
    )
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 2
    assert sum(isinstance(m, nn.Dropout) for m in net.modules()) == 3
    assert all(c.bias is None for c in net.modules() if isinstance(c, nn.Conv2d))
    net.train()
    assert net(torch.rand(4, 1, 32, 32)).shape == (4, 1)


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="one entry per conv"):
        SimpleCNN(channels=[8, 16], kernel_sizes=[3])
    with pytest.raises(ValueError, match="too small"):
        SimpleCNN(image_size=8)
    with pytest.raises(ConfigError, match="padding"):
        SimpleCNNClassifier(padding="full", image_size=32)


def test_classifier_wraps_network_with_normalisation():
    model = SimpleCNNClassifier(image_size=32)
    x = torch.rand(5, 1, 32, 32)
    logits = model(x)
    assert logits.shape == (5,)
    torch.testing.assert_close(logits, model.net((x - 0.5) / 0.5)[:, 0])
    assert isinstance(model.target_layer(), nn.ReLU)
    assert model.hparams.channels == [16, 32, 32, 64]
