"""The cohort engine: the trials of one batch size trained together, in lockstep.

The parameters of K trials live in one ``[K, P]`` buffer, a row per trial. Every step runs
the forward and backward passes of all trials as batched kernels and then one optimizer
update over the whole buffer. Two kernel sets compute the gradients:

* ``MlpKernels``: hand-written forward and backward passes (``torch.baddbmm``/``torch.bmm``)
  for an ``nn.Sequential`` of ``Linear`` and ``ReLU`` layers trained with cross-entropy. On a
  CPU with small matrices the per-operation overhead of autograd and of ``vmap`` dominates,
  and these kernels avoid both.
* ``FunctionalKernels``: any other module, through ``torch.func`` (``functional_call`` inside
  ``vmap(grad(...))``).

Each trial keeps its own initialisation, data order, schedule and optimizer state, so its
curve does not depend on which trials share its cohort. ``reference.py`` is the specification:
the same evaluation steps, the same rows, the same stop rules, the same racing bound. With the
hand-written kernels a trial's parameters follow the one-thread reference loop bit for bit.

How a cohort runs is planned per batch size (``plan_cohort``): trials per kernel call and
micro-batches from the device's memory and, on a CPU, its cache; one intra-op thread per
kernel, and concurrent workers over chunks of trials where timing shows they pay. None of
these choices changes a number.
"""

from __future__ import annotations

import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache, partial
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from batchscale.training.evaluation import EVAL_CHUNK
from batchscale.training.optimizers import batched_sgd_step, torch_optimizer
from batchscale.training.race import RaceBoard, best_bound_of
from batchscale.training.reference import initialised_model, intra_op_threads
from batchscale.training.schedules import linear_decay
from batchscale.training.trial import RaceBound, Status, StopRules, TrialResult, TrialSpec
from batchscale.workloads.base import Data, EpochSampler, Split, Workload

KernelKind = Literal["mlp", "functional"]

# Rows (trials x examples) one kernel call handles on a CPU: beyond this the activations of a
# chunk leave the cache and batching more trials into one call stops paying (measured by
# benchmarks/engine_throughput.py on a 2-core EPYC with 2 MiB of L2 per core).
CPU_CHUNK_ROWS = 2048
# Share of the free memory a cohort may fill with parameters, optimizer state and activations.
MEMORY_FRACTION = 0.25
# Concurrent workers on small kernel calls must beat one thread by this factor (the GIL makes
# them slower more often than not); on calls of CPU_CHUNK_ROWS rows they are kept unless
# slower by its inverse: they share work out as they go, so another job holding a
# core for a while costs them little, while a timing taken in such a while would rule them
# out for the whole batch size.
THREADS_MARGIN = 0.9
# Indices of at most this many examples are drawn ahead of the steps that use them.
INDEX_BLOCK = 1 << 22
# While an evaluation runs beside training, training looks at it this many times a stretch, so
# that the trials it ends or prunes stop soon after it is done rather than at the stretch's end.
LOOKS_PER_STRETCH = 8


# -- parameters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterLayout:
    """Where each parameter of one trial sits in its row of the flat ``[K, P]`` buffer."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    size: int

    @classmethod
    def of(cls, module: nn.Module) -> ParameterLayout:
        """The layout of ``module.named_parameters()``, in that order."""
        names, shapes, offsets = [], [], []
        offset = 0
        for name, parameter in module.named_parameters():
            names.append(name)
            shapes.append(tuple(parameter.shape))
            offsets.append(offset)
            offset += parameter.numel()
        return cls(tuple(names), tuple(shapes), tuple(offsets), offset)

    def views(self, rows: Tensor) -> list[Tensor]:
        """Views ``[k, *shape]`` of every parameter in ``rows`` (``[k, P]``), in layout order."""
        count = rows.shape[0]
        return [
            rows[:, offset : offset + math.prod(shape)].view(count, *shape)
            for offset, shape in zip(self.offsets, self.shapes, strict=True)
        ]

    def flatten(self, module: nn.Module) -> Tensor:
        """One trial's row: ``module``'s parameters, copied bit for bit."""
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


# -- kernels ------------------------------------------------------------------------------

# Examples per kernel call must be a multiple of this for the class-major log-softmax: then
# PyTorch's CPU kernel works on whole vectors of examples, with no scalar remainder.
CLASS_MAJOR_ALIGNMENT = 16


@cache
def class_major_log_softmax_is_exact(classes: int, dtype: torch.dtype) -> bool:
    """Whether log-softmax over dimension 1 of ``[k, classes, n]`` equals, bit for bit, the
    row-wise kernel on ``[k, n, classes]`` (forward and backward), for ``n`` a multiple of
    ``CLASS_MAJOR_ALIGNMENT``.

    PyTorch's CPU kernel over a short last dimension reduces one row at a time, an order of
    magnitude slower than over a leading dimension, where it runs along whole vectors of
    examples. Both add the exponentials in class order with the same vectorised exp and log on
    AVX-512 machines, but not on every build (AVX2 reduces rows as a tree), so a probe on this
    machine decides: random logits at several scales and example counts, one intra-op thread.
    """
    generator = torch.Generator().manual_seed(0)
    with intra_op_threads(1):
        for examples in (CLASS_MAJOR_ALIGNMENT, 3 * CLASS_MAJOR_ALIGNMENT, 1024, 4096):
            for scale in (1e-3, 1.0, 10.0, 1e3):
                shape = (2, examples, classes)
                logits = (torch.randn(shape, generator=generator) * scale).to(dtype)
                upstream = (torch.randn(shape, generator=generator) * scale).to(dtype)
                rowwise = torch.log_softmax(logits, -1)
                class_major = torch.log_softmax(logits.transpose(1, 2).contiguous(), 1)
                if not torch.equal(rowwise, class_major.transpose(1, 2)):
                    return False
                expected = torch.ops.aten._log_softmax_backward_data(upstream, rowwise, -1, dtype)
                got = torch.ops.aten._log_softmax_backward_data(
                    upstream.transpose(1, 2).contiguous(), class_major, 1, dtype
                )
                if not torch.equal(expected, got.transpose(1, 2)):
                    return False
    return True


class Kernels(ABC):
    """Batched forward and backward passes of K copies of one architecture."""

    def __init__(self, layout: ParameterLayout) -> None:
        self.layout = layout

    @abstractmethod
    def accumulate(
        self,
        params: Tensor,
        rows: slice,
        inputs: Tensor,
        targets: Tensor,
        label_smoothing: float,
        batch_size: int,
        grads: Tensor,
        first: bool,
    ) -> Tensor:
        """Gradients of one micro-batch for the trials in ``rows``, into ``grads[rows]``.

        ``inputs`` and ``targets`` hold ``m`` examples per trial out of a batch of
        ``batch_size``; the gradient written (``first``) or added is that of the micro-batch's
        share of the batch's mean loss, so the micro-batches of a batch add up to its update.
        Returns that share of each trial's loss.
        """

    @abstractmethod
    def outputs(self, params: Tensor, rows: slice, inputs: Tensor) -> Tensor:
        """Evaluation outputs ``[k, n, ...]`` of the trials in ``rows`` on shared ``inputs``."""

    @abstractmethod
    def row_bytes(self) -> int:
        """Memory one example of one trial takes during a training step."""

    @abstractmethod
    def select(self, keep: Tensor) -> None:
        """Keep only the per-trial state (if any) of the trials at positions ``keep``."""


def _is_plain_mlp(model: nn.Module) -> bool:
    if not isinstance(model, nn.Sequential):
        return False
    layers = list(model)
    own = sum(len(list(layer.parameters())) for layer in layers)
    return (
        any(isinstance(layer, nn.Linear) for layer in layers)
        and all(isinstance(layer, nn.Linear | nn.ReLU) for layer in layers)
        and own == len(list(model.parameters()))  # no weights shared between layers
    )


class MlpKernels(Kernels):
    """Hand-written passes for an ``nn.Sequential`` of ``Linear`` and ``ReLU`` layers.

    The loss is the workload's default cross-entropy (with label smoothing). No autograd graph
    is built, yet every kernel computes what autograd's does for a single trial (``baddbmm``
    and ``bmm`` compute each trial's matrix product exactly as ``addmm`` and ``mm`` do, whatever
    the number of trials; the log-softmax runs class-major only where a probe shows that layout
    gives the row-wise kernel's bits), so a trial's parameters follow the reference loop's bit
    for bit (without micro-batches, whose gradients add up in another order). That matters:
    near the edge of stability, a difference in the last bit grows into a different curve
    within a few hundred steps, and steps to result would then depend on the engine.
    """

    def __init__(self, model: nn.Sequential, layout: ParameterLayout) -> None:
        super().__init__(layout)
        index = {name: i for i, name in enumerate(layout.names)}
        # One entry per layer: (weight, bias) positions in the layout, or None for a ReLU.
        self.ops: list[tuple[int, int | None] | None] = []
        for position, layer in enumerate(model):
            if isinstance(layer, nn.Linear):
                bias = index[f"{position}.bias"] if layer.bias is not None else None
                self.ops.append((index[f"{position}.weight"], bias))
            else:
                self.ops.append(None)
        self.first_linear = next(i for i, op in enumerate(self.ops) if op is not None)
        self.widths = [layer.out_features if isinstance(layer, nn.Linear) else 0 for layer in model]
        self.in_features = next(
            layer.in_features for layer in model if isinstance(layer, nn.Linear)
        )
        self.element_size = next(p.element_size() for p in model.parameters())
        classes = self.widths[max(i for i, op in enumerate(self.ops) if op is not None)]
        parameter = next(model.parameters())
        self.class_major = parameter.device.type == "cpu" and class_major_log_softmax_is_exact(
            classes, parameter.dtype
        )

    @staticmethod
    def supports(model: nn.Module, workload: Workload, data: Data) -> bool:
        """Whether these kernels compute exactly what autograd would for ``workload``."""
        inputs, targets = data.train.inputs, data.train.targets
        return (
            _is_plain_mlp(model)
            and type(workload).loss is Workload.loss
            and inputs.dim() == 2
            and inputs.is_floating_point()
            and targets.dim() == 1
            and targets.dtype == torch.long
            and len({p.dtype for p in model.parameters()} | {inputs.dtype}) == 1
        )

    def _forward(self, weights: list[Tensor], hidden: Tensor, saved: list[Tensor] | None) -> Tensor:
        for op in self.ops:
            if op is None:
                # In place: the pre-activation is not needed (ReLU's backward reads its output).
                hidden = torch.relu_(hidden)
                if saved is not None:
                    saved.append(hidden)
                continue
            if saved is not None:
                saved.append(hidden)
            weight, bias = op
            transposed = weights[weight].transpose(1, 2)
            if bias is None:
                hidden = torch.bmm(hidden, transposed)
            else:
                hidden = torch.baddbmm(weights[bias].unsqueeze(1), hidden, transposed)
        return hidden

    def accumulate(
        self,
        params: Tensor,
        rows: slice,
        inputs: Tensor,
        targets: Tensor,
        label_smoothing: float,
        batch_size: int,
        grads: Tensor,
        first: bool,
    ) -> Tensor:
        """See ``Kernels.accumulate``."""
        weights = self.layout.views(params[rows])
        out = self.layout.views(grads[rows])
        saved: list[Tensor] = []
        logits = self._forward(weights, inputs, saved)
        class_major = self.class_major and logits.shape[1] % CLASS_MAJOR_ALIGNMENT == 0
        # Class-major ([k, C, n]) where that is bit for bit the row-wise kernel, only faster.
        dim = 1 if class_major else -1
        laid_out = logits.transpose(1, 2).contiguous() if class_major else logits
        log_probs = torch.log_softmax(laid_out, dim)
        picked_index = targets.unsqueeze(dim)
        picked = log_probs.gather(dim, picked_index)
        per_example = -picked
        if label_smoothing:
            # The mean over classes in the row-wise layout: the reference's order of additions.
            rowwise = log_probs.transpose(1, 2).contiguous() if class_major else log_probs
            smooth = -rowwise.mean(-1, keepdim=True)
            if class_major:
                smooth = smooth.transpose(1, 2)
            per_example = (1 - label_smoothing) * per_example + label_smoothing * smooth
        loss = per_example.sum((1, 2)).div_(batch_size)
        delta = torch.ops.aten._log_softmax_backward_data(
            self._loss_gradient(log_probs, picked_index, label_smoothing, batch_size, dim),
            log_probs,
            dim,
            logits.dtype,
        )
        if class_major:
            delta = delta.transpose(1, 2).contiguous()
        for position in range(len(self.ops) - 1, self.first_linear - 1, -1):
            op = self.ops[position]
            layer_input = saved[position]
            if op is None:
                delta = torch.ops.aten.threshold_backward(delta, layer_input, 0.0)
                continue
            weight, bias = op
            if first:
                torch.bmm(delta.transpose(1, 2), layer_input, out=out[weight])
            else:
                out[weight].baddbmm_(delta.transpose(1, 2), layer_input)
            if bias is not None:
                if first:
                    torch.sum(delta, 1, out=out[bias])
                else:
                    out[bias].add_(delta.sum(1))
            if position > self.first_linear:
                delta = torch.bmm(delta, weights[weight])
        return loss

    @staticmethod
    def _loss_gradient(
        log_probs: Tensor, picked_index: Tensor, label_smoothing: float, batch_size: int, dim: int
    ) -> Tensor:
        """d(mean cross-entropy)/d(log-probabilities), rounded step by step as autograd does.

        Autograd's gradient of ``F.cross_entropy`` (mean reduction) is ``-(1 - s) / B`` at the
        label plus ``-(s / C) / B`` everywhere, each factor rounded to the tensor's precision;
        with the same log-softmax backward kernel, the logits' gradient is then bit for bit
        autograd's, and so is every trial's whole trajectory.
        """
        one = torch.ones((), dtype=log_probs.dtype)
        at_label = float(-((one * (1 - label_smoothing)) / batch_size))
        everywhere = float(-((one * (label_smoothing / log_probs.shape[dim])) / batch_size))
        gradient = torch.full_like(log_probs, everywhere)
        label = torch.full(
            picked_index.shape, at_label, dtype=log_probs.dtype, device=log_probs.device
        )
        return gradient.scatter_add_(dim, picked_index, label)

    def outputs(self, params: Tensor, rows: slice, inputs: Tensor) -> Tensor:
        """See ``Kernels.outputs``."""
        weights = self.layout.views(params[rows])
        count = weights[0].shape[0]
        return self._forward(weights, inputs.expand(count, *inputs.shape), None)

    def row_bytes(self) -> int:
        """Saved activations and their gradients for one example."""
        return self.element_size * (self.in_features + 3 * sum(self.widths))

    def select(self, keep: Tensor) -> None:
        """Nothing to do: every per-trial tensor lives in the engine's buffers."""


def _activation_elements(model: nn.Module, example: Tensor) -> int:
    """Elements of every leaf module's output for one example (a proxy for saved tensors)."""
    counted = 0

    def count(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal counted
        if isinstance(output, Tensor):
            counted += output.numel()

    handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return counted


class FunctionalKernels(Kernels):
    """Any module, batched over trials with ``torch.func``.

    Buffers are stacked per trial like the parameters; the workload's own ``loss`` is
    differentiated per trial inside ``vmap``. Label smoothing enters the loss as a Python
    number, so the engine never mixes two smoothing values in one call.
    """

    def __init__(
        self, workload: Workload, models: list[nn.Module], layout: ParameterLayout, example: Tensor
    ) -> None:
        super().__init__(layout)
        self.workload = workload
        self.base = models[0]
        self.buffers = {
            name: torch.stack([dict(m.named_buffers())[name].detach() for m in models])
            for name, _ in self.base.named_buffers()
        }
        self._grad_fns: dict[float, Callable[..., tuple[dict[str, Tensor], Tensor]]] = {}
        self.element_size = next(p.element_size() for p in self.base.parameters())
        # Autograd keeps roughly an input, an output and a gradient per layer alive.
        self._row_bytes = self.element_size * (
            example[0].numel() + 3 * _activation_elements(self.base, example[:1])
        )

    def _grad_fn(self, label_smoothing: float) -> Callable[..., tuple[dict[str, Tensor], Tensor]]:
        if label_smoothing not in self._grad_fns:

            def trial_loss(
                params: dict[str, Tensor],
                buffers: dict[str, Tensor],
                inputs: Tensor,
                targets: Tensor,
            ) -> tuple[Tensor, Tensor]:
                outputs = functional_call(self.base, (params, buffers), (inputs,))
                loss = self.workload.loss(outputs, targets, label_smoothing)
                return loss, loss.detach()

            self._grad_fns[label_smoothing] = vmap(grad(trial_loss, has_aux=True))
        return self._grad_fns[label_smoothing]

    def _buffers(self, rows: slice) -> dict[str, Tensor]:
        return {name: buffer[rows] for name, buffer in self.buffers.items()}

    @staticmethod
    def _lone_trial_doubled(*trees: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """Each tensor of ``trees`` (a single trial's) stacked with a copy of itself.

        ``vmap`` over one trial runs other kernels (a convolution's, say) than over several,
        with other rounding; a lone trial computed beside its copy gets the bits it gets in
        any larger call, so its curve does not depend on how many trials share its call.
        """
        return [{name: torch.cat([t, t]) for name, t in tree.items()} for tree in trees]

    def accumulate(
        self,
        params: Tensor,
        rows: slice,
        inputs: Tensor,
        targets: Tensor,
        label_smoothing: float,
        batch_size: int,
        grads: Tensor,
        first: bool,
    ) -> Tensor:
        """See ``Kernels.accumulate``."""
        named = dict(zip(self.layout.names, self.layout.views(params[rows]), strict=True))
        buffers = self._buffers(rows)
        lone = inputs.shape[0] == 1
        if lone:
            named, buffers = self._lone_trial_doubled(named, buffers)
            inputs, targets = torch.cat([inputs, inputs]), torch.cat([targets, targets])
        self.base.train()
        gradients, loss = self._grad_fn(label_smoothing)(named, buffers, inputs, targets)
        if lone:
            gradients, loss = {name: g[:1] for name, g in gradients.items()}, loss[:1]
            inputs = inputs[:1]
        count = loss.shape[0]
        flat = torch.cat([gradients[name].reshape(count, -1) for name in self.layout.names], 1)
        if inputs.shape[1] != batch_size:
            share = inputs.shape[1] / batch_size
            flat.mul_(share)
            loss = loss * share
        if first:
            grads[rows].copy_(flat)
        else:
            grads[rows].add_(flat)
        return loss

    def outputs(self, params: Tensor, rows: slice, inputs: Tensor) -> Tensor:
        """See ``Kernels.outputs``."""
        named = dict(zip(self.layout.names, self.layout.views(params[rows]), strict=True))

        def forward(params: dict[str, Tensor], buffers: dict[str, Tensor]) -> Tensor:
            return functional_call(self.base, (params, buffers), (inputs,))

        buffers = self._buffers(rows)
        lone = next(iter(named.values())).shape[0] == 1
        if lone:
            named, buffers = self._lone_trial_doubled(named, buffers)
        was_training = self.base.training
        self.base.eval()
        try:
            with torch.no_grad():
                outputs = vmap(forward)(named, buffers)
        finally:
            self.base.train(was_training)
        return outputs[:1] if lone else outputs

    def row_bytes(self) -> int:
        """Estimated from the leaf modules' outputs for one example."""
        return self._row_bytes

    def select(self, keep: Tensor) -> None:
        """Drop the stacked buffers of finished trials."""
        self.buffers = {name: b.index_select(0, keep) for name, b in self.buffers.items()}


# -- data ---------------------------------------------------------------------------------


class BatchSource(ABC):
    """Each trial's own stream of training batches, delivered for all trials at once."""

    @abstractmethod
    def steps(self, count: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The next ``count`` batches: inputs ``[k, B, ...]`` and targets ``[k, B, ...]``."""

    @abstractmethod
    def select(self, keep: list[int]) -> None:
        """Keep only the trials at positions ``keep``."""


def _sampler_block(sampler: EpochSampler, steps: int) -> Tensor:
    if type(sampler).next_indices is EpochSampler.next_indices:
        return sampler.next_block(steps)
    return torch.stack([sampler.next_indices() for _ in range(steps)])


class IndexedBatches(BatchSource):
    """Batches indexed out of the stored training split, gathered for every trial in one go."""

    def __init__(
        self, workload: Workload, specs: list[TrialSpec], batch_size: int, train: Split
    ) -> None:
        self.samplers = [workload.train_sampler(s.data_seed, batch_size, train) for s in specs]
        self.batch_size = batch_size
        self.train = train

    def steps(self, count: int) -> Iterator[tuple[Tensor, Tensor]]:
        """See ``BatchSource.steps``."""
        trials = len(self.samplers)
        device = self.train.inputs.device
        block_steps = max(1, INDEX_BLOCK // (trials * self.batch_size))
        while count > 0:
            steps = min(count, block_steps)
            count -= steps
            indices = torch.stack([_sampler_block(s, steps) for s in self.samplers], 1)
            indices = indices.to(device, non_blocking=True)
            for step in range(steps):
                flat = indices[step].reshape(-1)
                inputs = self.train.inputs.index_select(0, flat)
                targets = self.train.targets.index_select(0, flat)
                yield (
                    inputs.view(trials, self.batch_size, *inputs.shape[1:]),
                    targets.view(trials, self.batch_size, *targets.shape[1:]),
                )

    def select(self, keep: list[int]) -> None:
        """See ``BatchSource.select``."""
        self.samplers = [self.samplers[i] for i in keep]


class StreamedBatches(BatchSource):
    """Batches from each trial's own ``workload.batches`` (for workloads that draw their data)."""

    def __init__(
        self, workload: Workload, specs: list[TrialSpec], batch_size: int, data: Data
    ) -> None:
        self.streams = [workload.batches(s.data_seed, batch_size, data) for s in specs]

    def steps(self, count: int) -> Iterator[tuple[Tensor, Tensor]]:
        """See ``BatchSource.steps``."""
        for _ in range(count):
            pairs = [next(stream) for stream in self.streams]
            yield torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def select(self, keep: list[int]) -> None:
        """See ``BatchSource.select``."""
        self.streams = [self.streams[i] for i in keep]


def batch_source(
    workload: Workload, specs: list[TrialSpec], batch_size: int, data: Data
) -> BatchSource:
    """Gather from the training split where the workload uses the default batches, else stream."""
    if type(workload).batches is Workload.batches:
        return IndexedBatches(workload, specs, batch_size, data.train)
    return StreamedBatches(workload, specs, batch_size, data)


# -- planning -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CohortPlan:
    """How the trials of one batch size are computed.

    ``cohort_size`` trials train in lockstep (more are run as successive cohorts);
    ``chunk_trials`` of them share one kernel call; ``micro_batch`` examples of each trial's
    batch go through one forward and backward pass (less than the batch size when a batch does
    not fit in memory; the micro-batches' gradients add up to the batch's); evaluation takes
    ``eval_examples`` examples per call; on a CPU, ``threads`` intra-op threads run the cohort
    (None: the process's setting). ``workers`` threads train chunks of trials concurrently,
    ``eval_workers`` threads evaluate parts of a split concurrently, and with
    ``background_evaluation`` an evaluation may run on a spare core while training goes on
    (hand-written kernels only, for all three).
    """

    kernels: KernelKind
    cohort_size: int
    chunk_trials: int
    micro_batch: int
    eval_examples: int = EVAL_CHUNK
    threads: int | None = None
    workers: int = 1
    eval_workers: int = 1
    background_evaluation: bool = False


def available_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 4 << 30


def make_kernels(
    kind: KernelKind, workload: Workload, models: list[nn.Module], example: Tensor
) -> Kernels:
    """The kernels of ``kind`` for the (identically built) ``models``."""
    layout = ParameterLayout.of(models[0])
    if kind == "mlp":
        model = models[0]
        assert isinstance(model, nn.Sequential)
        return MlpKernels(model, layout)
    return FunctionalKernels(workload, models, layout, example)


def _functional_batches(workload: Workload, models: list[nn.Module], data: Data) -> bool:
    """Whether ``torch.func`` can train these models as one batch: a two-trial probe.

    Modules that draw random numbers (dropout) fail inside ``vmap``; modules that update
    buffers in training (batch norm) would share state across trials. Both fall back.
    """
    layout = ParameterLayout.of(models[0])
    count = len(models)
    try:
        kernels = FunctionalKernels(workload, models, layout, data.train.inputs[:1])
        before = {name: buffer.clone() for name, buffer in kernels.buffers.items()}
        params = torch.stack([layout.flatten(m) for m in models])
        inputs, targets = next(workload.batches(0, 2, data))
        kernels.accumulate(
            params,
            slice(0, count),
            inputs.expand(count, *inputs.shape),
            targets.expand(count, *targets.shape),
            0.0,
            2,
            torch.empty_like(params),
            True,
        )
        kernels.outputs(params, slice(0, count), data.validation.inputs[:2])
    except Exception:
        # Whatever fails here fails inside vmap; the reference loop reports the model's own
        # errors, if it has any.
        return False
    return all(torch.equal(before[name], kernels.buffers[name]) for name in before)


def choose_kernels(workload: Workload, data: Data, specs: list[TrialSpec]) -> KernelKind | None:
    """The fastest kernels that batch ``workload``'s model exactly, or None if none can."""
    device = data.train.inputs.device
    models = [initialised_model(workload, s.init_seed).to(device) for s in (specs * 2)[:2]]
    parameters = list(models[0].parameters())
    if not parameters or len({(p.dtype, p.device) for p in parameters}) != 1:
        return None
    if not all(p.requires_grad for p in parameters):
        # Frozen parameters get no gradient from autograd, so the reference never moves them.
        return None
    if MlpKernels.supports(models[0], workload, data):
        return "mlp"
    return "functional" if _functional_batches(workload, models, data) else None


def plan_cohort(
    workload: Workload,
    data: Data,
    specs: list[TrialSpec],
    memory_bytes: int | None = None,
    check_speed: bool = True,
) -> CohortPlan | None:
    """How to batch ``specs`` (all of one batch size), or None where the reference loop is better.

    The plan fits ``memory_bytes`` (by default a share of the device's free memory): micro-
    batches when one trial's batch does not fit beside its state, fewer trials per kernel call
    and per cohort when their activations and state do not. On a CPU, a kernel call takes
    about ``CPU_CHUNK_ROWS`` rows so that activations stay in cache. With ``check_speed``, a
    few timed steps choose how to use the cores and, for ``torch.func``'s kernels, whether
    batching beats one trial at a time (see ``tune_plan``).
    """
    if not specs:
        return None
    kind = choose_kernels(workload, data, specs)
    if kind is None:
        return None
    device = data.train.inputs.device
    if memory_bytes is None:
        memory_bytes = int(MEMORY_FRACTION * available_memory(device))
    batch_size = specs[0].batch_size
    model = initialised_model(workload, specs[0].init_seed).to(device)
    kernels = make_kernels(kind, workload, [model, model], data.train.inputs[:1])
    element_size = next(p.element_size() for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    # Parameters, velocity and gradient of one trial, and its buffers.
    trial_bytes = 3 * kernels.layout.size * element_size + buffer_bytes
    row_bytes = max(1, kernels.row_bytes())
    micro_batch = min(batch_size, max(1, (memory_bytes - trial_bytes) // row_bytes))
    chunk_trials = max(1, memory_bytes // (trial_bytes + micro_batch * row_bytes))
    if device.type != "cuda":
        chunk_trials = min(chunk_trials, max(1, CPU_CHUNK_ROWS // micro_batch))
    activation_bytes = chunk_trials * micro_batch * row_bytes
    cohort_size = min(len(specs), max(1, (memory_bytes - activation_bytes) // trial_bytes))
    chunk_trials = min(chunk_trials, cohort_size)
    free_bytes = memory_bytes - cohort_size * trial_bytes
    # Evaluation is forward-only and may take more rows per call, as long as they stay in cache.
    eval_cap = EVAL_CHUNK if device.type == "cuda" else max(1, 2 * CPU_CHUNK_ROWS // chunk_trials)
    plan = CohortPlan(
        kernels=kind,
        cohort_size=cohort_size,
        chunk_trials=chunk_trials,
        micro_batch=micro_batch,
        eval_examples=min(EVAL_CHUNK, max(1, free_bytes // (chunk_trials * row_bytes)), eval_cap),
    )
    return tune_plan(workload, data, specs, plan) if check_speed else plan


def worker_threads(count: int, threads: int | None) -> ThreadPoolExecutor:
    """``count`` Python threads whose kernels each run on ``threads`` intra-op threads.

    The intra-op setting is per thread (OpenMP's and MKL's both): a fresh thread would run
    every matrix multiply on all cores, and two such workers would fight over them.
    """
    if threads is None:
        return ThreadPoolExecutor(count)
    return ThreadPoolExecutor(count, initializer=torch.set_num_threads, initargs=(threads,))


def _seconds(step: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def _reference_step(
    workload: Workload, spec: TrialSpec, inputs: Tensor, targets: Tensor
) -> Callable[[], None]:
    """One step of the reference loop on a fresh copy of ``spec``'s model."""
    model = initialised_model(workload, spec.init_seed).to(inputs.device)
    optimizer = torch_optimizer(list(model.parameters()), spec.optimizer, 0.0, 0.9)

    def step() -> None:
        loss = workload.loss(model(inputs), targets, spec.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def tune_plan(
    workload: Workload, data: Data, specs: list[TrialSpec], plan: CohortPlan, repeats: int = 5
) -> CohortPlan | None:
    """``plan`` with its fastest use of the CPU's cores, or None where one trial at a time wins.

    On a CPU every kernel runs on one intra-op thread: the numbers then never depend on how
    many threads split a reduction, and threads that wait on each other cannot stall when other
    work takes their cores. More cores are used by training chunks of trials, and evaluating
    parts of a split, concurrently from as many Python threads (PyTorch releases the GIL inside
    its kernels). That changes no number. At small batches the GIL makes it slower, and it
    must win clearly; on full kernel calls it is kept unless clearly slower (``THREADS_MARGIN``).
    The hand-written kernels do less work than autograd at every batch size; ``torch.func``'s
    may not, and are compared with a reference step on one thread, as the reference loop runs.
    Timings are interleaved, on copies of the first trials (the trials themselves are
    untouched), each the best of ``repeats`` after a warm-up, so that a burst of other work on
    the machine does not decide.
    """
    device = data.train.inputs.device
    cohort = specs[: plan.cohort_size]
    on_cpu = device.type == "cpu"
    plan = replace(plan, threads=1 if on_cpu else None)
    cores = torch.get_num_threads() if on_cpu else 1
    candidates = [plan]
    if plan.kernels == "mlp" and cores > 1 and len(cohort) > 1:
        chunk = min(plan.chunk_trials, -(-len(cohort) // cores))
        candidates.append(replace(plan, workers=cores, chunk_trials=chunk))
    # Enough trials for a full kernel call and two calls per worker: the cost per trial.
    sample = cohort[: max(plan.chunk_trials, 2 * cores * candidates[-1].chunk_trials)]
    states = [_CohortState(workload, data, sample, candidate) for candidate in candidates]
    try:
        inputs, targets = next(states[0].source.steps(1))
        rates = torch.zeros(len(sample), dtype=states[0].params.dtype, device=device)
        steps = [partial(state.train_step, inputs, targets, rates) for state in states]
        reference = None
        if plan.kernels == "functional":
            reference = _reference_step(workload, cohort[0], inputs[0], targets[0])
        seconds: list[list[float]] = [[] for _ in candidates]
        reference_seconds = []
        for _ in range(repeats + 1):
            with intra_op_threads(plan.threads):
                for step, timings in zip(steps, seconds, strict=True):
                    timings.append(_seconds(step, device))
            if reference is not None:
                with intra_op_threads(1 if on_cpu else None):
                    reference_seconds.append(_seconds(reference, device))
    finally:
        for state in states:
            state.close()
    # The first round warms up.
    best = [min(timings[1:]) for timings in seconds]
    full_calls = plan.chunk_trials * plan.micro_batch >= CPU_CHUNK_ROWS
    margin = 1 / THREADS_MARGIN if full_calls else THREADS_MARGIN
    tuned = candidates[-1] if best[-1] <= margin * best[0] else plan
    if reference is not None and min(best) / len(sample) >= min(reference_seconds[1:]):
        return None
    if plan.kernels == "mlp" and cores > 1:
        tuned = replace(
            tuned,
            # Evaluation calls are full ones (2 * CPU_CHUNK_ROWS rows, forward only) that hold
            # the GIL for a sliver of their time, so every core takes a share of the parts.
            # Timing that per batch size cost 1.5 s of a 40 s default study and always agreed.
            eval_workers=cores,
            # Training on one core leaves the others free to evaluate beside it.
            background_evaluation=tuned.workers == 1,
        )
    return tuned


# -- the engine ---------------------------------------------------------------------------


def _evaluation_loss(workload: Workload, outputs: Tensor, targets: Tensor) -> Tensor:
    """``workload.eval_loss``; the default cross-entropy over class indices computed directly.

    PyTorch's ``log_softmax`` over a handful of classes is several times slower on a CPU than
    the few elementwise kernels below, and evaluation of a cohort runs it on every example of
    every trial.
    """
    default = type(workload).eval_loss is Workload.eval_loss
    if not (default and outputs.dim() == 2 and targets.dim() == 1 and targets.dtype == torch.long):
        return workload.eval_loss(outputs, targets)
    shifted = outputs - outputs.amax(-1, keepdim=True)
    picked = shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return shifted.exp().sum(-1).log() - picked


class _CohortState:
    """Parameters, optimizer state, data streams and kernels of the trials still running."""

    def __init__(
        self, workload: Workload, data: Data, specs: list[TrialSpec], plan: CohortPlan
    ) -> None:
        device = data.train.inputs.device
        # Trials with the same label smoothing sit next to each other: a kernel call takes one.
        self.specs = sorted(specs, key=lambda s: (s.label_smoothing, s.trial_id))
        models = [initialised_model(workload, s.init_seed).to(device) for s in self.specs]
        self.kernels = make_kernels(plan.kernels, workload, models, data.train.inputs[:1])
        self.params = torch.stack([self.kernels.layout.flatten(m) for m in models])
        self.velocity = torch.zeros_like(self.params)
        self.grads = torch.zeros_like(self.params)
        self.plan = plan
        self.batch_size = self.specs[0].batch_size
        self.optimizer = self.specs[0].optimizer

        def column(values: list[float], dtype: torch.dtype) -> Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        self.learning_rate = column([s.learning_rate for s in self.specs], torch.float64)
        self.end_factor = column([s.end_factor for s in self.specs], torch.float64)
        self.decay_steps = column([float(s.decay_steps) for s in self.specs], torch.float64)
        self.momentum = column([s.momentum for s in self.specs], self.params.dtype)
        self.source = batch_source(workload, self.specs, self.batch_size, data)
        self.chunks = self._chunks()
        workers = max(plan.workers, plan.eval_workers)
        self.pool = worker_threads(workers, plan.threads) if workers > 1 else None

    def close(self) -> None:
        """Stop the worker threads, if any."""
        if self.pool is not None:
            self.pool.shutdown()

    def _chunks(self) -> list[tuple[slice, float]]:
        chunks = []
        start = 0
        while start < len(self.specs):
            smoothing = self.specs[start].label_smoothing
            stop = start + 1
            while (
                stop < len(self.specs)
                and stop - start < self.plan.chunk_trials
                and self.specs[stop].label_smoothing == smoothing
            ):
                stop += 1
            chunks.append((slice(start, stop), smoothing))
            start = stop
        return chunks

    def learning_rates(self, first_step: int, last_step: int) -> Tensor:
        """``[steps, k]`` learning rates of updates ``first_step`` .. ``last_step - 1``."""
        steps = torch.arange(
            first_step, last_step, dtype=torch.float64, device=self.params.device
        ).unsqueeze(1)
        return linear_decay(steps, self.learning_rate, self.end_factor, self.decay_steps)

    def _chunk_step(
        self, inputs: Tensor, targets: Tensor, rates: Tensor, chunk: tuple[slice, float]
    ) -> Tensor:
        """Gradients and update of the trials in one chunk; returns their minibatch losses."""
        rows, smoothing = chunk
        micro = self.plan.micro_batch
        shares = [
            self.kernels.accumulate(
                self.params,
                rows,
                inputs[rows, start : start + micro],
                targets[rows, start : start + micro],
                smoothing,
                self.batch_size,
                self.grads,
                start == 0,
            )
            for start in range(0, self.batch_size, micro)
        ]
        loss = shares[0]
        for share in shares[1:]:
            loss = loss + share
        # The update is elementwise per trial, so a chunk's rows update on their own (in the
        # worker that computed them, while their gradients are still in its cache).
        batched_sgd_step(
            [self.params[rows]],
            [self.grads[rows]],
            [self.velocity[rows]],
            rates[rows],
            self.momentum[rows],
            self.optimizer,
        )
        return loss

    @property
    def _concurrent(self) -> bool:
        return self.pool is not None and self.plan.workers > 1 and len(self.chunks) > 1

    def train_step(self, inputs: Tensor, targets: Tensor, rates: Tensor) -> Tensor:
        """One update of every trial; returns each trial's minibatch loss."""
        return next(self.train_steps(iter([(inputs, targets)]), rates.unsqueeze(0)))

    def train_steps(
        self, batches: Iterator[tuple[Tensor, Tensor]], rates: Tensor
    ) -> Iterator[Tensor]:
        """One update of every trial per batch of ``batches`` (``rates``: ``[steps, k]``).

        Yields each step's minibatch losses. With concurrent workers the next batch is
        gathered while the workers train on this one.
        """
        upcoming = next(batches, None)
        offset = 0
        while upcoming is not None:
            inputs, targets = upcoming
            step = partial(self._chunk_step, inputs, targets, rates[offset])
            if self._concurrent:
                assert self.pool is not None
                # Chunks read and write disjoint rows of every buffer, so they run concurrently.
                running = [self.pool.submit(step, chunk) for chunk in self.chunks]
                upcoming = next(batches, None)
                losses = [future.result() for future in running]
            else:
                losses = [step(chunk) for chunk in self.chunks]
                upcoming = next(batches, None)
            offset += 1
            yield losses[0] if len(losses) == 1 else torch.cat(losses)

    def _evaluation_sums(
        self, workload: Workload, params: Tensor, rows: slice, inputs: Tensor, targets: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Summed evaluation loss and metric of the trials in ``rows`` over some examples."""
        outputs = self.kernels.outputs(params, rows, inputs)
        trials = outputs.shape[0]
        flat = outputs.reshape(trials * len(inputs), *outputs.shape[2:])
        repeated = targets.expand(trials, *targets.shape).reshape(-1, *targets.shape[1:])
        losses = _evaluation_loss(workload, flat, repeated).view(trials, -1)
        metrics = workload.metric.per_example(flat, repeated).view(trials, -1)
        return losses.sum(1).double(), metrics.sum(1).double()

    def evaluate(
        self, workload: Workload, split: Split, params: Tensor | None = None, workers: int = 0
    ) -> tuple[list[float], list[float]]:
        """Mean evaluation loss and metric of every trial over ``split``.

        ``params`` (by default the current ones) may be a snapshot; ``workers`` (by default the
        plan's) threads evaluate parts of the split concurrently.
        """
        params = self.params if params is None else params
        workers = workers or self.plan.eval_workers
        examples = self.plan.eval_examples
        tasks = [
            (rows, split.inputs[start : start + examples], split.targets[start : start + examples])
            for start in range(0, len(split), examples)
            for rows, _ in self.chunks
        ]
        sums = partial(self._evaluation_sums, workload, params)
        if self.pool is not None and workers > 1 and len(tasks) > 1:
            results = list(self.pool.map(lambda task: sums(*task), tasks))
        else:
            results = [sums(*task) for task in tasks]
        loss_sum = torch.zeros(len(self.specs), dtype=torch.float64, device=params.device)
        metric_sum = torch.zeros_like(loss_sum)
        # The same additions in the same order whichever thread computed each part.
        for (rows, _, _), (losses, metrics) in zip(tasks, results, strict=True):
            loss_sum[rows] += losses
            metric_sum[rows] += metrics
        return (loss_sum / len(split)).tolist(), (metric_sum / len(split)).tolist()

    def keep(self, positions: list[int]) -> None:
        """Drop every trial not at ``positions``."""
        keep = torch.tensor(positions, dtype=torch.long, device=self.params.device)
        self.specs = [self.specs[i] for i in positions]
        self.params = self.params.index_select(0, keep)
        self.velocity = self.velocity.index_select(0, keep)
        self.grads = self.grads.index_select(0, keep)
        self.learning_rate = self.learning_rate.index_select(0, keep)
        self.end_factor = self.end_factor.index_select(0, keep)
        self.decay_steps = self.decay_steps.index_select(0, keep)
        self.momentum = self.momentum.index_select(0, keep)
        self.kernels.select(keep)
        self.source.select(positions)
        self.chunks = self._chunks()


def train_cohort(
    workload: Workload,
    data: Data,
    specs: list[TrialSpec],
    rules: StopRules,
    evaluation_steps: list[int],
    race: bool,
    bound: RaceBound | None,
    on_result: Callable[[TrialResult], None],
    plan: CohortPlan,
    board: RaceBoard | None = None,
) -> RaceBound | None:
    """Train ``specs`` (one batch size) in lockstep; hand each trial to ``on_result`` as it ends.

    The semantics are the reference loop's, trial by trial. With ``race`` the bound tightens
    at every evaluation: once any trial reaches the goal, every trial that can no longer beat
    it stops as PRUNED. ``board`` (racing only) shares the bound with cohorts running
    elsewhere: read at every evaluation, offered every improvement. A trial's ``train_time``
    and ``wall_time`` are its share of the cohort's: each interval divided among the trials
    running during it. Returns the bound.
    """
    with intra_op_threads(plan.threads):
        return _train_cohort(
            workload, data, specs, rules, evaluation_steps, race, bound, on_result, plan, board
        )


def _train_cohort(
    workload: Workload,
    data: Data,
    specs: list[TrialSpec],
    rules: StopRules,
    evaluation_steps: list[int],
    race: bool,
    bound: RaceBound | None,
    on_result: Callable[[TrialResult], None],
    plan: CohortPlan,
    board: RaceBoard | None,
) -> RaceBound | None:
    started = time.perf_counter()
    state = _CohortState(workload, data, specs, plan)
    try:
        lockstep = _Lockstep(workload, data, state, rules, race, bound, on_result, board)
        lockstep.share(time.perf_counter() - started, train=False)
        return lockstep.run(evaluation_steps)
    finally:
        state.close()


@dataclass
class _Evaluation:
    """The rows of one evaluation step, possibly still being computed by a worker."""

    step: int
    results: list[TrialResult]
    train_loss: list[float]
    pending: Future[tuple[list[float], ...]] | None = None
    values: tuple[list[float], ...] = ()

    def done(self) -> bool:
        """Whether the values are there (``wait`` returns at once)."""
        return self.pending is None or self.pending.done()

    def wait(self) -> tuple[list[float], ...]:
        """Validation loss and metric, test loss and metric, one entry per trial."""
        if self.pending is not None:
            self.values = self.pending.result()
            self.pending = None
        return self.values


class _Lockstep:
    """The evaluation loop of ``train_cohort``: the reference loop's rules, for every trial.

    Where training runs on one core and the next stretch of training takes at least half as
    long as an evaluation, the evaluation of a step runs on another core while training goes
    on (from a copy of the parameters). Its outcome is applied once it is done, between parts
    of the stretch and at the latest before the next evaluation: trials that ended at it have
    trained some steps more, which are thrown away, and trials pruned by it get no row at the
    next step, exactly as if they had stopped at once.
    """

    def __init__(
        self,
        workload: Workload,
        data: Data,
        state: _CohortState,
        rules: StopRules,
        race: bool,
        bound: RaceBound | None,
        on_result: Callable[[TrialResult], None],
        board: RaceBoard | None = None,
    ) -> None:
        self.workload = workload
        self.data = data
        self.state = state
        self.rules = rules
        self.race = race
        self.bound = bound
        self.on_result = on_result
        self.board = board
        self.device = state.params.device
        self.results = [TrialResult(spec=s, status=Status.COMPLETE, steps=0) for s in state.specs]
        self.loss_sum = torch.zeros(len(self.results), dtype=torch.float64, device=self.device)
        self.losses_since_eval = 0
        self.step = 0
        self.background = (
            worker_threads(1, state.plan.threads) if state.plan.background_evaluation else None
        )
        self.step_seconds = 0.0
        self.evaluation_seconds = 0.0

    def share(self, seconds: float, train: bool) -> None:
        """Divide ``seconds`` among the running trials."""
        for result in self.results:
            result.wall_time += seconds / len(self.results)
            if train:
                result.train_time += seconds / len(self.results)

    def run(self, evaluation_steps: list[int]) -> RaceBound | None:
        """Train and evaluate through ``evaluation_steps``; returns the racing bound."""
        pending: _Evaluation | None = None
        try:
            for index, eval_step in enumerate(evaluation_steps):
                if pending is None:
                    # Not while an evaluation runs beside: it reads the trials being dropped.
                    # A trial to prune trains a stretch more, and is pruned before any row.
                    self._prune(eval_step)
                if self.results and self.step < eval_step:
                    pending = self._train(eval_step, pending)
                if pending is not None:
                    self._record(pending)
                    pending = None
                    self._prune(eval_step)
                if not self.results:
                    break
                following = evaluation_steps[index + 1 : index + 2]
                stretch = following[0] - eval_step if following else 0
                evaluation = self._evaluate(stretch * self.step_seconds)
                if evaluation.pending is None:
                    self._record(evaluation)
                else:
                    pending = evaluation
            if pending is not None:
                self._record(pending)
        finally:
            if self.background is not None:
                self.background.shutdown()
        self._finish(dict.fromkeys(range(len(self.results)), Status.COMPLETE))
        return self.bound

    def _prune(self, eval_step: int) -> None:
        """With racing, stop the trials that can no longer win at ``eval_step`` or later."""
        if self.board is not None:
            self.bound = best_bound_of(self.bound, self.board.current(self.state.batch_size))
        if not self.race or self.bound is None:
            return
        bound = self.bound
        self._finish(
            {
                p: Status.PRUNED
                for p, result in enumerate(self.results)
                if eval_step > bound.last_useful_step(result.spec.trial_id)
            }
        )

    def _train(self, until: int, pending: _Evaluation | None) -> _Evaluation | None:
        """Train the running trials to step ``until``; returns ``pending`` if not yet recorded.

        While ``pending`` is evaluated beside, training goes in parts; once it is done its rows
        are recorded there and the trials it ends or prunes stop at once (each part's batches
        are drawn for exactly its steps, so the others' data order is untouched).
        """
        first, seconds = self.step, 0.0
        part = max(1, -(-(until - first) // LOOKS_PER_STRETCH))
        while self.results and self.step < until:
            if pending is not None and pending.done():
                self._record(pending)
                pending = None
                self._prune(until)
                continue
            steps = until - self.step if pending is None else min(part, until - self.step)
            seconds += self._train_part(steps)
        if self.step > first:
            self.step_seconds = seconds / (self.step - first)
        return pending

    def _train_part(self, steps: int) -> float:
        """Train the running trials ``steps`` steps; returns the seconds it took."""
        started = time.perf_counter()
        state = self.state
        rates = state.learning_rates(self.step, self.step + steps).to(state.params.dtype)
        for loss in state.train_steps(state.source.steps(steps), rates):
            self.loss_sum += loss
            self.step += 1
            self.losses_since_eval += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        self.share(seconds, train=True)
        return seconds

    def _evaluate(self, stretch_seconds: float) -> _Evaluation:
        """Evaluate every running trial now; in the background if training can go on beside."""
        started = time.perf_counter()
        count = self.losses_since_eval
        train_loss = (self.loss_sum / count).tolist() if count else [math.nan] * len(self.results)
        self.loss_sum.zero_()
        self.losses_since_eval = 0
        evaluation = _Evaluation(
            step=self.step,
            results=list(self.results),
            train_loss=train_loss,
        )
        if self.background is not None and stretch_seconds >= self.evaluation_seconds / 2:
            # A copy: training goes on updating the parameters in place meanwhile.
            evaluation.pending = self.background.submit(self._measure, self.state.params.clone(), 1)
        else:
            evaluation.values = self._measure(self.state.params, 0)
            self.share(time.perf_counter() - started, train=False)
        return evaluation

    def _measure(self, params: Tensor, workers: int) -> tuple[list[float], ...]:
        started = time.perf_counter()
        state, workload = self.state, self.workload
        val_loss, val_metric = state.evaluate(workload, self.data.validation, params, workers)
        test_loss, test_metric = state.evaluate(workload, self.data.test, params, workers)
        self.evaluation_seconds = time.perf_counter() - started
        return val_loss, val_metric, test_loss, test_metric

    def _record(self, evaluation: _Evaluation) -> None:
        """Append the evaluation's rows; end the trials that diverged or reached the goal."""
        started = time.perf_counter()
        val_loss, val_metric, test_loss, test_metric = evaluation.wait()
        self.share(time.perf_counter() - started, train=False)
        metric = self.workload.metric.name
        step = evaluation.step
        ends: dict[int, Status] = {}
        for p, result in enumerate(evaluation.results):
            result.measurements.append(
                {
                    "step": step,
                    "train/loss": evaluation.train_loss[p],
                    "val/loss": val_loss[p],
                    "test/loss": test_loss[p],
                    f"val/{metric}": val_metric[p],
                    f"test/{metric}": test_metric[p],
                }
            )
            result.steps = step
            ending = self.rules.ending(result, f"val/{metric}")
            if ending is not None:
                ends[p] = ending
        reached = [
            evaluation.results[p].spec.trial_id for p, s in ends.items() if s == Status.COMPLETE
        ]
        if reached and (self.bound is None or self.bound.improved_by(step, min(reached))):
            self.bound = RaceBound(step=step, trial_id=min(reached))
            if self.board is not None:
                self.board.offer(self.state.batch_size, step, min(reached))
        self._finish(ends)

    def _finish(self, ends: dict[int, Status]) -> None:
        """Hand the trials at positions ``ends`` over, in trial order, and drop them."""
        for position in sorted(ends, key=lambda p: self.results[p].spec.trial_id):
            self.results[position].status = ends[position]
            self.on_result(self.results[position])
        keep = [p for p in range(len(self.results)) if p not in ends]
        if keep and ends:
            self.state.keep(keep)
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            self.loss_sum = self.loss_sum.index_select(0, index)
        self.results[:] = [self.results[p] for p in keep]
