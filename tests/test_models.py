"""The paper's models and ghost batch norm."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from batchscale.workloads.nets import (
    GhostBatchNorm,
    ResNet8,
    TransformerLM,
    fully_connected,
    simple_cnn,
    vgg11,
)


def count(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters())


def conv(channels_in: int, channels_out: int, kernel: int, bias: bool = True) -> int:
    """Parameters of a square convolution."""
    return kernel * kernel * channels_in * channels_out + (channels_out if bias else 0)


def dense(units_in: int, units_out: int) -> int:
    """Parameters of a dense layer with bias."""
    return units_in * units_out + units_out


def norm(channels: int) -> int:
    """Parameters of a (ghost) batch norm: scale and shift."""
    return 2 * channels


# The architectures as their docstrings state them, counted layer by layer.
SIMPLE_CNN = conv(1, 32, 5) + conv(32, 64, 5) + dense(7 * 7 * 64, 1024) + dense(1024, 10)
RESNET8 = (
    conv(3, 16, 3, False)
    + norm(16)
    + 2 * (conv(16, 16, 3, False) + norm(16))
    + conv(16, 32, 3, False)
    + conv(32, 32, 3, False)
    + conv(16, 32, 1, False)
    + 3 * norm(32)
    + conv(32, 64, 3, False)
    + conv(64, 64, 3, False)
    + conv(32, 64, 1, False)
    + 3 * norm(64)
    + dense(64, 10)
)
VGG11_CHANNELS = [3, 64, 128, 256, 256, 512, 512, 512, 512]
VGG11 = sum(conv(a, b, 3, False) + norm(b) for a, b in pairwise(VGG11_CHANNELS)) + dense(512, 10)
FULLY_CONNECTED = dense(784, 1024) + 2 * dense(1024, 1024) + dense(1024, 10)
TRANSFORMER_BLOCK = norm(128) + dense(128, 384) + dense(128, 128) + norm(128)
TRANSFORMER_BLOCK += dense(128, 512) + dense(512, 128)
TRANSFORMER = 256 * 128 + 128 * 128 + 4 * TRANSFORMER_BLOCK + norm(128)


@pytest.mark.parametrize(
    ("model", "inputs", "output", "parameters"),
    [
        (simple_cnn(), torch.randn(3, 1, 28, 28), (3, 10), SIMPLE_CNN),
        (ResNet8(), torch.randn(3, 3, 32, 32), (3, 10), RESNET8),
        (vgg11(), torch.randn(3, 3, 32, 32), (3, 10), VGG11),
        (fully_connected(784, 1024, 3), torch.randn(3, 784), (3, 10), FULLY_CONNECTED),
        (TransformerLM(), torch.randint(0, 256, (3, 128)), (3, 128, 256), TRANSFORMER),
    ],
    ids=["simple-cnn", "resnet8", "vgg11", "fc", "transformer"],
)
def test_models_have_the_stated_shapes_and_sizes(
    model: nn.Module, inputs: Tensor, output: tuple[int, ...], parameters: int
) -> None:
    assert model(inputs).shape == output
    assert count(model) == parameters


def test_the_stated_sizes_are_the_documented_numbers() -> None:
    assert (SIMPLE_CNN, RESNET8, VGG11, TRANSFORMER) == (3_274_634, 78_042, 9_228_362, 842_496)


def test_width_scales_every_layer() -> None:
    assert count(simple_cnn(width=8)) == conv(1, 8, 5) + conv(8, 16, 5) + dense(784, 256) + dense(
        256, 10
    )
    assert count(ResNet8(width=32)) > 3.9 * count(ResNet8(width=16))
    assert count(vgg11(width=32)) < count(vgg11())
    assert count(fully_connected(784, 64, 1)) == dense(784, 64) + dense(64, 10)
    colour = simple_cnn(in_channels=3, image_size=32, width=4)
    assert colour(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_fully_connected_is_a_plain_stack_the_cohort_engine_can_batch() -> None:
    model = fully_connected(40, 16, 2, 10)
    assert all(isinstance(layer, nn.Linear | nn.ReLU) for layer in model)
    with pytest.raises(ValueError, match="depth"):
        fully_connected(40, 16, 0)


def test_the_language_model_is_causal() -> None:
    model = TransformerLM(context=16, width=32, depth=2, heads=4)
    tokens = torch.randint(0, 256, (2, 16))
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 256
    before, after = model(tokens), model(changed)
    assert torch.allclose(before[:, :9], after[:, :9], atol=1e-6)
    assert not torch.allclose(before[:, 9:], after[:, 9:])
    assert model(tokens[:, :5]).shape == (2, 5, 256)
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def ghost(channels: int = 3, size: int = 8) -> GhostBatchNorm:
    """A ghost batch norm with a scale and shift that are not the identity."""
    layer = GhostBatchNorm(channels, size)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 2.0, channels))
        layer.bias.copy_(torch.linspace(-1.0, 1.0, channels))
    return layer


def per_slice(layer: GhostBatchNorm, inputs: Tensor, sizes: list[int]) -> Tensor:
    """Plain batch norm of each slice on its own, with the layer's scale and shift."""
    pieces = torch.split(inputs, sizes)
    return torch.cat(
        [F.batch_norm(p, None, None, layer.weight, layer.bias, training=True) for p in pieces]
    )


@pytest.mark.parametrize(
    ("batch", "sizes"),
    [(32, [8, 8, 8, 8]), (20, [8, 8, 4]), (5, [5])],
    ids=["whole-slices", "remainder", "smaller-than-ghost"],
)
def test_ghost_batch_norm_normalises_each_slice_on_its_own(batch: int, sizes: list[int]) -> None:
    layer = ghost()
    inputs = 3 * torch.randn(batch, 3, 4, 4) + 1
    expected = per_slice(layer, inputs, sizes)
    assert torch.allclose(layer(inputs), expected, atol=1e-5)


def test_a_slice_is_normalised_the_same_whatever_the_batch_around_it() -> None:
    layer = ghost()
    inputs = torch.randn(64, 3, 4, 4)
    alone = layer(inputs[:8])
    assert torch.allclose(layer(inputs[:16])[:8], alone, atol=1e-6)
    assert torch.allclose(layer(inputs)[:8], alone, atol=1e-6)
    shuffled = torch.cat([inputs[8:], inputs[:8]])
    assert torch.allclose(layer(shuffled)[-8:], alone, atol=1e-6)


def test_ghost_batch_norm_matches_batch_norm_when_the_batch_fits_one_slice() -> None:
    layer, reference = GhostBatchNorm(4, 64), nn.BatchNorm1d(4)
    inputs = 2 * torch.randn(48, 4) - 1
    for _ in range(3):
        assert torch.allclose(layer(inputs), reference(inputs), atol=1e-5)
    assert torch.allclose(layer.running_mean, reference.running_mean, atol=1e-6)
    assert torch.allclose(layer.running_var, reference.running_var, atol=1e-5)


def test_running_statistics_average_the_slices() -> None:
    layer = GhostBatchNorm(3, 8, momentum=1.0)
    inputs = torch.randn(24, 3, 2, 2) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    layer(inputs)
    slices = inputs.view(3, 8, 3, 2, 2)
    assert torch.allclose(layer.running_mean, slices.mean(dim=(1, 3, 4)).mean(0), atol=1e-6)
    variances = slices.var(dim=(1, 3, 4), correction=1).mean(0)
    assert torch.allclose(layer.running_var, variances, atol=1e-5)


def test_evaluation_uses_the_running_statistics_and_leaves_them_alone() -> None:
    layer = ghost()
    for _ in range(60):
        layer(torch.randn(32, 3, 4, 4) * 2 + 5)
    assert torch.allclose(layer.running_mean, torch.full((3,), 5.0), atol=0.3)
    layer.eval()
    inputs = torch.randn(10, 3, 4, 4) * 2 + 5
    before = layer.running_mean.clone()
    outputs = layer(inputs)
    assert torch.equal(layer.running_mean, before)
    expected = F.batch_norm(inputs, layer.running_mean, layer.running_var, layer.weight, layer.bias)
    assert torch.allclose(outputs, expected, atol=1e-6)
    assert torch.allclose(layer(inputs[:3]), outputs[:3], atol=1e-6)  # per example, no batch


def tiny_resnet() -> nn.Module:
    return ResNet8(width=4, ghost_batch_size=4)


def tiny_transformer() -> nn.Module:
    return TransformerLM(context=8, width=16, depth=1, heads=2)


# vmap runs fused attention one trial at a time, and says so.
@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize(
    ("factory", "inputs", "targets"),
    [
        (tiny_resnet, torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))),
        (tiny_transformer, torch.randint(0, 256, (8, 8)), torch.randint(0, 256, (8, 8))),
    ],
    ids=["resnet8", "transformer"],
)
def test_models_train_under_vmap_exactly_as_one_at_a_time(
    factory: Callable[[], nn.Module], inputs: Tensor, targets: Tensor
) -> None:
    """Two trials as one ``vmap`` call: the gradients and the running statistics of each
    trial are what training it alone gives (batch norm updates each trial's own buffers)."""
    torch.manual_seed(0)
    models = [factory(), factory()]
    base = models[0]

    def loss(params: dict[str, Tensor], buffers: dict[str, Tensor]) -> Tensor:
        outputs = functional_call(base, (params, buffers), (inputs,))
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))

    params = {
        name: torch.stack([dict(m.named_parameters())[name].detach() for m in models])
        for name, _ in base.named_parameters()
    }
    buffers = {
        name: torch.stack([dict(m.named_buffers())[name].clone() for m in models])
        for name, _ in base.named_buffers()
    }
    gradients = vmap(grad(loss))(params, buffers)
    for index, model in enumerate(models):
        model.zero_grad()
        outputs = model(inputs)
        F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1)).backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None
            assert torch.allclose(gradients[name][index], parameter.grad, atol=1e-5), name
        for name, buffer in model.named_buffers():
            assert torch.allclose(buffers[name][index], buffer, atol=1e-6), name
