"""The noisy quadratic model in closed form (Zhang et al. 2019): expected loss and steps to result.

The model (METHOD.md, and exactly the ``nqm`` workload): loss L(x) = 1/2 sum_i h_i x_i^2 with
h_i = 1/i (i = 1..d); a batch of B examples gives the gradient H x + xi with E[xi] = 0 and
Cov(xi) = H / B; x0 ~ N(0, I). Every update is linear in x and xi, so x stays Gaussian with zero
mean, the dimensions stay independent, and E[L_k] = 1/2 sum_i h_i E[x_{k,i}^2].

Derivations, per dimension (h = h_i, noise variance sigma^2 = h / B, s = E[x^2], s_0 = 1):

* SGD with learning rate a and preconditioner P = H^-gamma (p = h^-gamma): x <- x - a p (h x + xi)
  = (1 - c h) x - c xi with c = a p. So s <- beta s + c^2 sigma^2 with beta = (1 - c h)^2, i.e.
  s_k = beta^k s_0 + c^2 sigma^2 (1 - beta^k) / (1 - beta), the form s* + beta^k (s_0 - s*) of
  METHOD.md with s* = c^2 sigma^2 / (1 - beta). Preconditioning thus replaces a h by a p h in the
  contraction and a^2 h / B by a^2 p^2 h / B in the injected noise (the noise is preconditioned
  too: P xi has variance p^2 h / B), while the loss still weighs s by h, not by p h.
* Heavy-ball momentum exactly as ``torch.optim.SGD`` fed the preconditioned gradient P g
  (velocity starts at 0); per dimension that is v <- m v + g, x <- x - c v with v the velocity
  of the unpreconditioned gradient, so u = (x, v) obeys
  u' = A u + b xi with A = [[1 - c h, -c m], [h, m]] and b = (-c, 1). Its second moments
  M = E[u u^T] follow M' = A M A^T + sigma^2 b b^T, a 3x3 linear recurrence on (E[x^2], E[x v],
  E[v^2]). Subtracting its fixed point M* (the stationary covariance) leaves the homogeneous
  M_k - M* = A^k (M_0 - M*) A^k^T with M_0 = diag(s_0, 0). Solving M* = A M* A^T + sigma^2 b b^T:
  E[x^2]* = c sigma^2 (1 + m) / (h D), E[x v]* = -c sigma^2 / D, E[v^2]* = 2 sigma^2 / D with
  D = (1 - m)(2 (1 + m) - c h). By Cayley-Hamilton, A^k = U_k A - m U_{k-1} I with
  U_j = (l1^j - l2^j) / (l1 - l2) over A's eigenvalues l1, l2 (l1 l2 = det A = m,
  l1 + l2 = 1 + m - c h), and U_{-1} = -1 / m. U_j is evaluated in a form that stays exact at
  repeated eigenvalues (critical damping, U_j = j l1^(j-1)) and for complex pairs
  (U_j = m^((j-1)/2) sin(j t) / sin t), which is why this route is used rather than a numerical
  eigendecomposition of the 3x3 map, ill-conditioned near critical damping.
  The dynamics are stable iff 0 <= m < 1 and 0 < c h < 2 (1 + m); unstable settings get an
  infinite expected loss (they diverge).

Steps to result at a batch size is the smallest k at which some (learning rate, momentum) has
E[L_k] < target. That equals the minimum over settings of each setting's first step below the
target, and it is found by doubling then bisection on k, where each probe minimises E[L_k] over a
log-spaced grid of learning rates (and of 1 - momentum), refined by repeatedly zooming a finer
grid around the grid's lowest few local minima (at few steps, momentum's oscillations give E[L_k]
several basins over the settings). The tests check the result against a direct iteration of the
recurrences over a much finer grid: it matches to the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

Array = NDArray[np.float64]
NQMOptimizer = Literal["sgd", "momentum"]

# The ``nqm`` workload's dimensions and goal, so that predictions overlay its studies.
DEFAULT_DIMS = 100
DEFAULT_TARGET = 0.05

# The search over settings (see ``_Search``): 1 - momentum is log-spaced over this range; the
# learning rate runs from a floor (``_FLOOR_FACTOR`` times the largest rate whose noise floor meets
# the target, and at least ``_MIN_DECADES`` below the top) to the stability limit less a margin.
ONE_MINUS_MOMENTUM_RANGE = (1e-4, 0.99)
_STABILITY_MARGIN = 1e-6
_FLOOR_FACTOR = 1e-3
_MIN_DECADES = 3.0
# Coarse grid sizes; then ``_ZOOM_ROUNDS`` rounds of ``_ZOOM_POINTS`` per axis around each of the
# ``_ZOOM_STARTS`` lowest local minima, each round ``_ZOOM_SHRINK`` times finer. With 65 x 29,
# the zoom found the optimum of a 400 x 200 brute-force grid at every batch size tried.
_GRID_LEARNING_RATES = 65
_GRID_MOMENTA = 29
_ZOOM_POINTS = 9
_ZOOM_STARTS = 4
_ZOOM_ROUNDS = 5
_ZOOM_SHRINK = 4.0
_SPREAD_MARGIN = 0.125


@dataclass(frozen=True)
class NoisyQuadratic:
    """The NQM of ``dims`` dimensions, preconditioned by P = H^-gamma (gamma = 0: none)."""

    dims: int = DEFAULT_DIMS
    gamma: float = 0.0

    def __post_init__(self) -> None:
        if self.dims < 1:
            raise ValueError(f"the NQM needs at least one dimension, got dims={self.dims}")
        if not math.isfinite(self.gamma):
            raise ValueError(f"gamma must be finite, got {self.gamma}")

    @cached_property
    def curvature(self) -> Array:
        """h_i = 1 / i."""
        return 1.0 / np.arange(1, self.dims + 1, dtype=np.float64)

    @cached_property
    def preconditioner(self) -> Array:
        """p_i = h_i^-gamma."""
        return self.curvature ** (-self.gamma)

    @property
    def initial_loss(self) -> float:
        """E[L_0] = 1/2 sum_i h_i (x0 ~ N(0, I))."""
        return 0.5 * float(self.curvature.sum())

    def max_learning_rate(self, momentum: float = 0.0) -> float:
        """The stability limit: a p_i h_i < 2 (1 + momentum) in every dimension."""
        return 2.0 * (1.0 + momentum) / float((self.preconditioner * self.curvature).max())

    def loss_curve(
        self, learning_rate: ArrayLike, batch_size: ArrayLike, momentum: ArrayLike = 0.0
    ) -> Callable[[ArrayLike], Array]:
        """E[L_k] as a function of the step count k, for settings broadcast together.

        ``momentum`` 0 is plain SGD, otherwise heavy-ball momentum as in ``torch.optim.SGD``;
        the learning rate is constant. Settings outside the stable region give ``inf``. The
        work that does not depend on k is done once, here; the returned function takes step
        counts that broadcast against the settings' shape.
        """
        lr, b, m = np.broadcast_arrays(
            *(np.asarray(v, dtype=np.float64) for v in (learning_rate, batch_size, momentum))
        )
        if np.any(lr <= 0) or np.any(b <= 0) or np.any((m < 0) | (m >= 1)):
            raise ValueError("learning rates and batch sizes must be positive, 0 <= momentum < 1")
        h = self.curvature
        # A trailing axis over dimensions: c = a p_i, noise variance h_i / B.
        c = lr[..., None] * self.preconditioner
        noise = h / b[..., None]
        plain = m == 0
        sgd = _SGDTerms(c[plain], h, noise[plain]) if plain.any() else None
        heavy = (
            _MomentumTerms(c[~plain], m[~plain][:, None], h, noise[~plain])
            if not plain.all()
            else None
        )

        def curve(steps: ArrayLike) -> Array:
            k = np.broadcast_to(np.asarray(steps, dtype=np.float64), lr.shape)
            if np.any(k < 0) or np.any(k != np.round(k)):
                raise ValueError("steps must be non-negative integers")
            second = np.empty(c.shape)
            if sgd is not None:
                second[plain] = sgd.second_moment(k[plain][:, None])
            if heavy is not None:
                second[~plain] = heavy.second_moment(k[~plain][:, None])
            with np.errstate(invalid="ignore"):
                loss: Array = 0.5 * (second * h).sum(axis=-1)
            return np.where(np.isnan(loss), np.inf, loss)

        return curve

    def expected_loss(
        self,
        steps: ArrayLike,
        learning_rate: ArrayLike,
        batch_size: ArrayLike,
        momentum: ArrayLike = 0.0,
    ) -> Array:
        """E[L_k] after ``steps`` updates (all arguments broadcast together); see ``loss_curve``."""
        k, lr, b, m = np.broadcast_arrays(
            *(np.asarray(v, dtype=np.float64) for v in (steps, learning_rate, batch_size, momentum))
        )
        return self.loss_curve(lr, b, m)(k)


class _SGDTerms:
    """E[x_k^2] per dimension under (preconditioned) SGD from s_0 = 1."""

    def __init__(self, c: Array, h: Array, noise: Array) -> None:
        step = c * h
        self.stable = (step > 0) & (step < 2)
        with np.errstate(divide="ignore"):
            self.log_beta = 2.0 * np.log(np.abs(1.0 - step))
        self.one_minus_beta = step * (2.0 - step)
        self.injected = c * c * noise

    def second_moment(self, k: Array) -> Array:
        """Per-dimension second moments after k steps (``inf`` where unstable)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # (1 - beta^k) / (1 - beta) without cancellation when beta is close to 1.
            # At k = 0 the sum is empty: 0, even where beta = 0 makes k * log(beta) undefined.
            geometric = np.where(
                k == 0,
                0.0,
                np.where(
                    self.one_minus_beta > 0, -np.expm1(k * self.log_beta) / self.one_minus_beta, k
                ),
            )
            decay = np.where(k == 0, 1.0, np.exp(k * self.log_beta))
            second = decay + self.injected * geometric
        return np.where(self.stable, second, np.inf)


class _MomentumTerms:
    """E[x_k^2] per dimension under heavy-ball momentum from x_0 ~ N(0, 1), v_0 = 0.

    Uses A^k = U_k A - m U_{k-1} I with U_j = (l1^j - l2^j) / (l1 - l2) over the roots of
    l^2 - (1 + m - c h) l + m; U_j is written so that it stays exact at a repeated root
    (U_j = j l1^(j-1)), and U_{-1} = -1 / m makes A^0 = I.
    """

    def __init__(self, c: Array, m: Array, h: Array, noise: Array) -> None:
        step = c * h
        self.c, self.m, self.step = c, m, step
        self.stable = (step > 0) & (step < 2.0 * (1.0 + m)) & (m > 0) & (m < 1)
        trace = 1.0 + m - step
        disc = trace * trace - 4.0 * m
        root = np.sqrt(np.abs(disc))
        self.real_roots = disc >= 0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # The stationary second moments M* (E[x^2]*, E[x v]*, E[v^2]*).
            d = (1.0 - m) * (2.0 * (1.0 + m) - step)
            self.xx = c * noise * (1.0 + m) / (h * d)
            self.xv = -c * noise / d
            self.vv = 2.0 * noise / d
            # Real roots: l1 the larger in magnitude, q = l2 / l1 in (0, 1], gap = 1 - q
            # computed without cancellation; U_j = l1^(j-1) (1 - q^j) / (1 - q).
            big = 0.5 * (trace + np.copysign(root, trace))
            self.gap = root / np.abs(big)
            self.log_q = np.log1p(-self.gap)
            self.log_big = np.log(np.abs(big))
            self.negative = big < 0
            # Complex pair sqrt(m) e^{+-i t}: U_j = m^((j-1)/2) sin(j t) / sin t.
            self.angle = np.arctan2(root, trace)
            self.sine = root / (2.0 * np.sqrt(m))
            self.half_log_m = 0.5 * np.log(m)

    def _chebyshev(self, j: Array) -> Array:
        ratio = np.where(self.gap > 0, -np.expm1(j * self.log_q) / self.gap, j)
        flip = self.negative & (np.mod(j - 1, 2) == 1)
        real = np.where(flip, -1.0, 1.0) * np.exp((j - 1) * self.log_big) * ratio
        complex_pair = np.exp((j - 1) * self.half_log_m) * np.sin(j * self.angle) / self.sine
        return np.where(self.real_roots, real, complex_pair)

    def second_moment(self, k: Array) -> Array:
        """Per-dimension second moments after k steps (``inf`` where unstable)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
            u_k, u_before = self._chebyshev(k), self._chebyshev(k - 1)
            # The first row of A^k; E[x_k^2] = M*_xx + (A^k (M_0 - M*) A^k^T)_xx.
            ax = u_k * (1.0 - self.step) - self.m * u_before
            av = -self.c * self.m * u_k
            second = (
                self.xx + ax * ax * (1.0 - self.xx) - 2.0 * ax * av * self.xv - av * av * self.vv
            )
        return np.where(self.stable, second, np.inf)


@dataclass(frozen=True)
class NQMPoint:
    """The predicted optimum at one batch size.

    ``steps_to_result`` is ``None`` where the target is not reached within the step limit; then
    the settings are those with the lowest expected loss at that limit.
    """

    batch_size: int
    steps_to_result: int | None
    learning_rate: float
    momentum: float
    expected_loss: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class NQMPrediction:
    """Predicted steps to result against batch size for one optimizer on one NQM."""

    optimizer: NQMOptimizer
    dims: int
    gamma: float
    target: float
    points: tuple[NQMPoint, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict whose ``batch_sizes`` lists one object per batch size."""
        return {
            "optimizer": self.optimizer,
            "dims": self.dims,
            "gamma": self.gamma,
            "target": self.target,
            "initial_loss": NoisyQuadratic(self.dims, self.gamma).initial_loss,
            "batch_sizes": [point.to_dict() for point in self.points],
        }


class _Search:
    """The settings searched at one batch size, as unit coordinates (u, v) in [0, 1]^2.

    u runs the learning rate log-uniformly from a floor up to just below the stability limit
    (which depends on the momentum); the floor is a fraction of the largest effective rate whose
    noise floor, about a / (1 - m) * sum_i p_i h_i / (4 B), meets the target. v runs 1 - momentum
    log-uniformly over ``ONE_MINUS_MOMENTUM_RANGE`` (SGD: a single v, momentum 0). The coarse
    grid's k-independent work is done once, since bisection probes it at many step counts.
    """

    def __init__(
        self, model: NoisyQuadratic, batch_size: int, target: float, optimizer: NQMOptimizer
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.optimizer = optimizer
        weight = float((model.preconditioner * model.curvature).sum())
        self.floor_rate = _FLOOR_FACTOR * 4.0 * batch_size * target / weight
        self.v_points = 1 if optimizer == "sgd" else _GRID_MOMENTA
        self.du = 1.0 / (_GRID_LEARNING_RATES - 1)
        self.dv = 1.0 / (self.v_points - 1) if self.v_points > 1 else 0.0
        self.grid_u, self.grid_v = np.meshgrid(
            np.linspace(0.0, 1.0, _GRID_LEARNING_RATES),
            np.linspace(0.0, 1.0, self.v_points),
            indexing="ij",
        )
        self.grid_rate, self.grid_momentum = self.decode(self.grid_u, self.grid_v)
        self.grid_curve = model.loss_curve(self.grid_rate, batch_size, self.grid_momentum)

    def decode(self, u: Array, v: Array) -> tuple[Array, Array]:
        """Learning rates and momenta at unit coordinates ``u`` and ``v``."""
        if self.optimizer == "sgd":
            momentum = np.zeros_like(v)
        else:
            low, high = ONE_MINUS_MOMENTUM_RANGE
            momentum = 1.0 - np.exp(np.log(high) + v * (np.log(low) - np.log(high)))
        ceiling = (1.0 - _STABILITY_MARGIN) * self.model.max_learning_rate() * (1.0 + momentum)
        floor = np.minimum(ceiling * 10.0**-_MIN_DECADES, self.floor_rate * (1 - momentum))
        rate = np.exp(np.log(floor) + u * (np.log(ceiling) - np.log(floor)))
        return rate, momentum


def _local_minima(loss: Array, count: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Indices of up to ``count`` lowest finite local minima of a 2-D grid (ties included)."""
    lowest_near = ndimage.minimum_filter(loss, size=3, mode="nearest")
    rows, cols = np.nonzero((loss <= lowest_near) & np.isfinite(loss))
    order = np.argsort(loss[rows, cols], kind="stable")[:count]
    return rows[order], cols[order]


def _best_settings(search: _Search, steps: int, target: float | None) -> tuple[float, float, float]:
    """(loss, learning rate, momentum) minimising E[L_steps] over the searched settings.

    At fixed steps E[L] can have several basins over (learning rate, momentum) (dimensions
    oscillate under momentum, and where their phases meet matters at few steps), so the zoom
    starts from the lowest few local minima of the coarse grid.
    With ``target``, only the side of the target matters: it returns as soon as a loss falls
    below it, or once no start can get there. Near a smooth minimum the loss rises
    quadratically, so the best point of a zoom grid is within a small fraction (under 1/16 for a
    quadratic) of the grid's spread of loss from the minimum: a start whose best exceeds the
    target by more than ``_SPREAD_MARGIN`` times that spread stays above it.
    """
    loss = search.grid_curve(steps)
    rows, cols = _local_minima(loss, _ZOOM_STARTS)
    if len(rows) == 0:  # every grid point diverges (cannot happen below the stability limit)
        return math.inf, float(search.grid_rate[0, 0]), float(search.grid_momentum[0, 0])
    # One entry per start: its centre, and its best loss and settings so far.
    u, v = search.grid_u[rows, cols], search.grid_v[rows, cols]
    best_loss = loss[rows, cols]
    best_rate, best_momentum = search.grid_rate[rows, cols], search.grid_momentum[rows, cols]
    du, dv = search.du, search.dv
    u_offsets = np.linspace(-1.0, 1.0, _ZOOM_POINTS)[:, None]
    v_offsets = np.linspace(-1.0, 1.0, _ZOOM_POINTS if search.v_points > 1 else 1)
    spread = np.full(len(u), np.inf)  # the coarse grid is always zoomed into once
    starts = np.arange(len(u))
    for _ in range(_ZOOM_ROUNDS):
        if target is not None and (
            best_loss.min() < target or np.all(best_loss - target > _SPREAD_MARGIN * spread)
        ):
            break
        # Each zoom grid holds its start's centre, so no start's loss rises between rounds.
        zu, zv = np.broadcast_arrays(
            np.clip(u[:, None, None] + du * u_offsets, 0.0, 1.0),
            np.clip(v[:, None, None] + dv * v_offsets, 0.0, 1.0),
        )
        rate, momentum = search.decode(zu, zv)
        loss = search.model.expected_loss(steps, rate, search.batch_size, momentum)
        flat = loss.reshape(len(u), -1)
        pick = (starts, *np.unravel_index(flat.argmin(axis=1), loss.shape[1:]))
        spread = np.where(np.isfinite(flat), flat, -np.inf).max(axis=1) - loss[pick]
        best_loss, best_rate, best_momentum = loss[pick], rate[pick], momentum[pick]
        u, v = zu[pick], zv[pick]
        du, dv = du / _ZOOM_SHRINK, dv / _ZOOM_SHRINK
    winner = int(np.argmin(best_loss))
    return float(best_loss[winner]), float(best_rate[winner]), float(best_momentum[winner])


def optimal_steps(
    batch_size: int,
    *,
    optimizer: NQMOptimizer = "sgd",
    model: NoisyQuadratic | None = None,
    target: float = DEFAULT_TARGET,
    max_steps: int = 10**9,
) -> NQMPoint:
    """Fewest steps to E[L] < ``target`` at ``batch_size``, over learning rate (and momentum)."""
    model = model or NoisyQuadratic()
    if batch_size < 1:
        raise ValueError(f"batch sizes must be positive, got {batch_size}")
    if not target > 0:
        raise ValueError(f"the target loss must be positive (the minimum is 0), got {target}")
    if optimizer not in ("sgd", "momentum"):
        raise ValueError(f"unknown optimizer '{optimizer}'; the NQM supports sgd and momentum")
    if model.initial_loss < target:
        return NQMPoint(batch_size, 0, 0.0, 0.0, model.initial_loss)
    search = _Search(model, batch_size, target, optimizer)

    def reached(steps: int) -> bool:
        return _best_settings(search, steps, target)[0] < target

    # Doubling brackets the answer in (low, high]; bisection then narrows it to one step.
    low, high = 0, 1
    while not reached(high):
        if high >= max_steps:
            loss, rate, momentum = _best_settings(search, max_steps, None)
            return NQMPoint(batch_size, None, rate, momentum, loss)
        low, high = high, min(2 * high, max_steps)
    while high - low > 1:
        middle = (low + high) // 2
        if reached(middle):
            high = middle
        else:
            low = middle
    loss, rate, momentum = _best_settings(search, high, None)
    return NQMPoint(batch_size, high, rate, momentum, loss)


def predicted_curve(
    batch_sizes: Sequence[int],
    *,
    optimizer: NQMOptimizer = "sgd",
    dims: int = DEFAULT_DIMS,
    gamma: float = 0.0,
    target: float = DEFAULT_TARGET,
    max_steps: int = 10**9,
) -> NQMPrediction:
    """Predicted steps to result (with the best learning rate and momentum) at each batch size."""
    model = NoisyQuadratic(dims, gamma)
    points = tuple(
        optimal_steps(
            int(batch_size), optimizer=optimizer, model=model, target=target, max_steps=max_steps
        )
        for batch_size in sorted(set(batch_sizes))
    )
    return NQMPrediction(optimizer, dims, gamma, target, points)
