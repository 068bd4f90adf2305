"""A race board: the best steps to result known at each batch size, shared by running cohorts.

Cohorts of one batch size that run at the same time (on several workers) race against each
other through a board: each consults it at every evaluation step and offers every trial that
reaches the goal sooner than the board's bound. The engines prune a trial only once its next
evaluation step lies beyond ``RaceBound.last_useful_step`` of the best bound, so a board that
is late, or loses its state, only prunes less: steps to result never depend on it.
"""

from __future__ import annotations

from typing import Protocol

from batchscale.training.trial import RaceBound


class RaceBoard(Protocol):
    """Where cohorts read and offer the best (step, trial) that reached the goal."""

    def current(self, batch_size: int) -> RaceBound | None:
        """The best bound known at ``batch_size``, if any."""
        ...

    def offer(self, batch_size: int, step: int, trial_id: int) -> None:
        """Report that ``trial_id`` reached the goal at ``step``."""
        ...


def best_bound_of(first: RaceBound | None, second: RaceBound | None) -> RaceBound | None:
    """The tighter of two bounds (either may be missing)."""
    if first is None:
        return second
    if second is None or not first.improved_by(second.step, second.trial_id):
        return first
    return second


class LocalRaceBoard:
    """A race board in one process; the Ray executor runs one as an actor."""

    def __init__(self) -> None:
        self._bounds: dict[int, RaceBound] = {}

    def current(self, batch_size: int) -> RaceBound | None:
        """See ``RaceBoard.current``."""
        return self._bounds.get(batch_size)

    def offer(self, batch_size: int, step: int, trial_id: int) -> None:
        """See ``RaceBoard.offer``; a bound that is not better is ignored."""
        tighter = best_bound_of(self._bounds.get(batch_size), RaceBound(step, trial_id))
        assert tighter is not None
        self._bounds[batch_size] = tighter
