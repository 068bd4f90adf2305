"""The paper's models (Shallue et al. 2019), as plain ``nn.Module``s, and ghost batch norm.

Every model here trains in the reference loop and under ``torch.func`` (``functional_call``
with ``vmap`` over stacked per-trial parameters and buffers): none draws random numbers, and
ghost batch norm updates its running statistics in place on whatever buffer it is given, so
under ``vmap`` each trial updates its own. ``width`` scales every layer of a model together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GhostBatchNorm(nn.Module):
    """Batch norm whose training statistics come from fixed-size slices ("ghost batches").

    In training, each run of ``ghost_batch_size`` consecutive examples is normalised with its
    own mean and (biased) variance, so the noise that batch statistics add, and with it batch
    norm's regularisation, stays the same whatever the batch size (Hoffer et al. 2017; the
    paper fixes this size for the same reason). A batch that is not a multiple of the ghost
    size ends in one smaller slice; a batch smaller than it is a single slice. The running
    statistics, used in evaluation, follow the slices' statistics (weighted by slice size)
    with ``momentum`` as in ``nn.BatchNorm``. Inputs are ``[N, C]`` or ``[N, C, *spatial]``.
    """

    running_mean: Tensor
    running_var: Tensor

    def __init__(
        self, channels: int, ghost_batch_size: int, momentum: float = 0.1, eps: float = 1e-5
    ) -> None:
        super().__init__()
        if ghost_batch_size < 1:
            raise ValueError(f"ghost_batch_size must be at least 1, got {ghost_batch_size}")
        self.ghost_batch_size = ghost_batch_size
        self.momentum = momentum
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        return f"{len(self.weight)}, ghost_batch_size={self.ghost_batch_size}"

    def forward(self, inputs: Tensor) -> Tensor:
        """Normalise per ghost batch (training) or with the running statistics (evaluation)."""
        if not self.training:
            return F.batch_norm(
                inputs, self.running_mean, self.running_var, self.weight, self.bias, eps=self.eps
            )
        count = inputs.shape[0]
        size = min(self.ghost_batch_size, count)
        whole = count - count % size
        # Slices as a leading dimension: [slices, size, C, *spatial]; the remainder apart.
        blocks = [inputs[:whole].unflatten(0, (whole // size, size))]
        if whole < count:
            blocks.append(inputs[whole:].unsqueeze(0))
        outputs = []
        mean_sum, variance_sum, total = inputs.new_zeros(()), inputs.new_zeros(()), 0
        for block in blocks:
            dims = (1, *range(3, block.dim()))
            variance, mean = torch.var_mean(block, dim=dims, correction=0, keepdim=True)
            outputs.append(((block - mean) * torch.rsqrt(variance + self.eps)).flatten(0, 1))
            # Running statistics: the slices' means and unbiased variances, weighted by size.
            slices, per_channel = block.shape[0], block[0].numel() // block.shape[2]
            unbiased = variance * (per_channel / max(per_channel - 1, 1))
            mean_sum = mean_sum + mean.reshape(slices, -1).sum(0) * per_channel
            variance_sum = variance_sum + unbiased.reshape(slices, -1).sum(0) * per_channel
            total += slices * per_channel
        # In place, on the buffers this call was given: under torch.func, each trial's own.
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(mean_sum / total, alpha=self.momentum)
            self.running_var.mul_(1 - self.momentum).add_(variance_sum / total, alpha=self.momentum)
        normalised = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        shape = (1, -1) + (1,) * (inputs.dim() - 2)
        return normalised * self.weight.view(shape) + self.bias.view(shape)


def simple_cnn(
    in_channels: int = 1, image_size: int = 28, classes: int = 10, width: int = 32
) -> nn.Sequential:
    """The paper's simple CNN: two 5x5 conv layers with max-pooling, one hidden dense layer.

    conv 5x5 (``width`` channels, 'same' padding) - ReLU - max-pool 2x2 -
    conv 5x5 (``2 * width``) - ReLU - max-pool 2x2 - dense (``32 * width`` units) - ReLU -
    dense (``classes``). At the default width 32: 32 and 64 channels, 1024 hidden units,
    3,274,634 parameters on 28x28 grey images. No batch norm.
    """
    pooled = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * pooled * pooled, 32 * width),
        nn.ReLU(),
        nn.Linear(32 * width, classes),
    )


def fully_connected(inputs: int, width: int, depth: int, classes: int = 10) -> nn.Sequential:
    """``depth`` ReLU hidden layers of ``width`` units on flat inputs, then the output layer.

    A plain ``Sequential`` of ``Linear`` and ``ReLU``, which the cohort engine batches with its
    hand-written kernels.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least one hidden layer, got {depth}")
    layers: list[nn.Module] = []
    for size_in in [inputs] + [width] * (depth - 1):
        layers += [nn.Linear(size_in, width), nn.ReLU()]
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def _conv3x3(channels_in: int, channels_out: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the batch norm that follows every convolution has its own shift.
    conv = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with ghost batch norm, added to a shortcut, then ReLU (He et al.)."""

    def __init__(self, channels_in: int, channels_out: int, stride: int, ghost: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels_in, channels_out, stride)
        self.norm1 = GhostBatchNorm(channels_out, ghost)
        self.conv2 = _conv3x3(channels_out, channels_out)
        self.norm2 = GhostBatchNorm(channels_out, ghost)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            # A 1x1 projection where the shape changes.
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False),
                GhostBatchNorm(channels_out, ghost),
            )

    def forward(self, inputs: Tensor) -> Tensor:
        """conv-norm-ReLU-conv-norm, plus the shortcut, ReLU."""
        hidden = F.relu(self.norm1(self.conv1(inputs)))
        hidden = self.norm2(self.conv2(hidden))
        return F.relu(hidden + self.shortcut(inputs))


class ResNet8(nn.Module):
    """ResNet-8 for 32x32 images (He et al. 2016's CIFAR ResNet with one block per stage).

    conv 3x3 (``width``) - norm - ReLU; residual blocks of ``width``, ``2 * width`` and
    ``4 * width`` channels (the last two with stride 2 and a 1x1 projection shortcut); global
    average pool; dense (``classes``). Seven convolutions on the main path and one dense
    layer: eight layers. At the default width 16: 78,042 parameters. Every batch norm is a
    ``GhostBatchNorm`` of ``ghost_batch_size``.
    """

    def __init__(
        self, in_channels: int = 3, classes: int = 10, width: int = 16, ghost_batch_size: int = 32
    ) -> None:
        super().__init__()
        self.stem = _conv3x3(in_channels, width)
        self.stem_norm = GhostBatchNorm(width, ghost_batch_size)
        self.blocks = nn.Sequential(
            ResidualBlock(width, width, 1, ghost_batch_size),
            ResidualBlock(width, 2 * width, 2, ghost_batch_size),
            ResidualBlock(2 * width, 4 * width, 2, ghost_batch_size),
        )
        self.head = nn.Linear(4 * width, classes)

    def forward(self, images: Tensor) -> Tensor:
        """Logits of ``[N, C, H, W]`` images."""
        hidden = self.blocks(F.relu(self.stem_norm(self.stem(images))))
        return self.head(hidden.mean(dim=(-2, -1)))


# VGG-11 ("configuration A", Simonyan & Zisserman 2015): channels as multiples of the width,
# 0 for a 2x2 max-pool.
VGG11_LAYERS = (1, 0, 2, 0, 4, 4, 0, 8, 8, 0, 8, 8, 0)


def vgg11(
    in_channels: int = 3,
    image_size: int = 32,
    classes: int = 10,
    width: int = 64,
    ghost_batch_size: int = 32,
) -> nn.Sequential:
    """VGG-11 with ghost batch norm, for small images.

    Eight 3x3 conv - norm - ReLU layers of ``width`` x (1, 2, 4, 4, 8, 8, 8, 8) channels with
    five 2x2 max-pools between them, then one dense output layer (on 32x32 images the last
    pool leaves 1x1, so the ImageNet model's two 4096-unit layers have nothing to pool and are
    left out, as is usual on CIFAR-10). At the default width 64: 9,228,362 parameters.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for multiple in VGG11_LAYERS:
        if multiple == 0:
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [
            _conv3x3(channels, multiple * width),
            GhostBatchNorm(multiple * width, ghost_batch_size),
            nn.ReLU(),
        ]
        channels = multiple * width
    pooled = image_size // 32
    layers += [nn.Flatten(), nn.Linear(channels * pooled * pooled, classes)]
    return nn.Sequential(*layers)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which each position sees only itself and earlier ones.

    Fused attention (``F.scaled_dot_product_attention``) never holds the ``[T, T]`` scores of
    every head and example in memory, which at large batch sizes would dominate. ``vmap`` has
    no batching rule for it yet and runs it once per trial (with a warning): exact, slower.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of the {heads} attention heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, hidden: Tensor) -> Tensor:
        """``[N, T, width]`` to ``[N, T, width]``."""
        batch, length, width = hidden.shape
        qkv = self.qkv(hidden).view(batch, length, 3, self.heads, width // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(query, key, value, is_causal=True)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, width))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + MLP(norm(x)) with a 4x GELU MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, hidden: Tensor) -> Tensor:
        """One residual attention step and one residual MLP step."""
        hidden = hidden + self.attention(self.norm1(hidden))
        return hidden + self.mlp(self.norm2(hidden))


class TransformerLM(nn.Module):
    """A small causal Transformer language model (decoder only, no dropout).

    Token and learned position embeddings of ``width``, ``depth`` pre-norm blocks with
    ``heads`` heads, a final layer norm, and an output layer tied to the token embedding.
    Input ``[N, T]`` token ids (T at most ``context``), output ``[N, T, vocab]`` logits
    predicting each next token. At the defaults (vocab 256, context 128, width 128, depth 4,
    heads 4): 842,496 parameters.
    """

    def __init__(
        self, vocab: int = 256, context: int = 128, width: int = 128, depth: int = 4, heads: int = 4
    ) -> None:
        super().__init__()
        self.context = context
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(torch.zeros(context, width))
        # Small embeddings: the tied output layer turns them into the first logits.
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions, std=0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token logits at every position."""
        length = tokens.shape[-1]
        if length > self.context:
            raise ValueError(f"sequence of {length} tokens exceeds the context of {self.context}")
        hidden = self.tokens(tokens) + self.positions[:length]
        hidden = self.norm(self.blocks(hidden))
        return F.linear(hidden, self.tokens.weight)
