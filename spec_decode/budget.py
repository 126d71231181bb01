"""How many draft nodes a step should verify: the tree budget from a cost model.

A bigger tree accepts more tokens per step, but where the target's pass grows with its rows
(a CPU, where a 16-row pass costs twice a 1-row one; a GPU under heavy batching) the extra
nodes can cost more time than the tokens they win. Each step picks the budget ``n`` that
maximises tokens per second of wall time:

    n* = argmax_{0 <= n <= cap}  (1 + E[acc(n)]) / T(1 + n)

- ``T(rows)``, the wall time of one step whose verify pass has ``rows`` rows (the pending token
  plus ``n`` nodes), is a line ``a + b * rows`` fitted online by least squares with exponential
  forgetting (:class:`StepCost`) over every step of every request the orchestrator serves, so
  it also covers the draft call, the network and the orchestrator's own time. On a GPU ``b`` is
  close to zero and the budget stays at the cap; on a CPU it shrinks to what pays.
- ``E[acc(n)]``, the tokens a tree cut to its first ``n`` nodes would have accepted, is
  estimated per request (:class:`AcceptanceProfile`) with a per-method prior from earlier
  requests. One verified tree tells it for every ``n`` at once: parents come before their
  children, so the accepted path of a tree cut to ``n`` nodes is the accepted nodes with index
  ``< n`` (exact for greedy acceptance, an estimate for sampling). Budgets above the trees
  verified so far are seen on exploration steps: every ``explore_every``-th step asks for
  twice the best budget (at least 4 more nodes), so a budget that was too small grows back.
  A request with nothing known yet asks for the cap.

Any budget keeps decoding lossless: the acceptance rule is exact for every tree, and the
budget depends only on steps already taken. Only speed changes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from spec_decode.errors import InvalidArgument

TREE_BUDGETS = ("cost", "max")  # cost: chosen per step by the model here; max: always the cap
EXPLORE_STEP = 4  # an exploration step asks for max(2 * best, best + this) nodes


@dataclass(frozen=True)
class BudgetConfig:
    """Knobs of the cost-model budget."""

    explore_every: int = 8  # every k-th step of a request tries a bigger budget than the best one
    prior_weight: float = 4.0  # pseudo-steps the per-method prior counts for in a new request
    prior_max_steps: float = 256.0  # the prior remembers about this many recent steps

    def validate(self) -> BudgetConfig:
        if self.explore_every < 1:
            raise InvalidArgument(f"explore_every must be >= 1, got {self.explore_every}")
        if self.prior_weight < 0 or self.prior_max_steps <= 0:
            raise InvalidArgument("prior_weight must be >= 0 and prior_max_steps > 0")
        return self


class StepCost:
    """Online least-squares line ``seconds = a + b * rows`` with exponential forgetting.

    Thread-safe: one instance is shared by every request of an orchestrator (the target and
    the drafters are the same for all of them).

    Example:
        >>> cost = StepCost(decay=1.0, min_steps=2)
        >>> for rows in (1, 5, 9):
        ...     cost.observe(rows, 0.020 + 0.002 * rows)
        >>> [round(v, 4) for v in cost.line()]
        [0.02, 0.002]
    """

    def __init__(self, decay: float = 0.995, min_steps: int = 16) -> None:
        if not 0.0 < decay <= 1.0:
            raise InvalidArgument(f"decay must be in (0, 1], got {decay}")
        self.decay = decay  # forgetting factor per observed step
        # below this many steps the cost is taken as flat (every budget costs the same)
        self.min_steps = min_steps
        self._lock = threading.Lock()
        self._n = 0
        self._w = self._x = self._y = self._xx = self._xy = 0.0  # decayed sums

    @property
    def steps(self) -> int:
        return self._n

    def observe(self, rows: int, seconds: float) -> None:
        """One step's wall time with ``rows`` rows in its verify pass."""
        if rows < 1 or not math.isfinite(seconds) or seconds <= 0:
            return
        d = self.decay
        with self._lock:
            self._n += 1
            self._w = d * self._w + 1.0
            self._x = d * self._x + rows
            self._y = d * self._y + seconds
            self._xx = d * self._xx + rows * rows
            self._xy = d * self._xy + rows * seconds

    def line(self) -> tuple[float, float]:
        """``(a, b)``: seconds of a step = a + b * rows. ``b`` is 0 until the fit is trustworthy."""
        with self._lock:
            n, w, x, y, xx, xy = self._n, self._w, self._x, self._y, self._xx, self._xy
        if n == 0:
            return 1.0, 0.0
        mean_x, mean_y = x / w, y / w
        var_x = xx / w - mean_x * mean_x
        if n < self.min_steps or var_x < 0.25:  # too few steps, or every step had about the same rows
            return mean_y, 0.0
        slope = max(0.0, (xy / w - mean_x * mean_y) / var_x)  # more rows never make a pass cheaper
        return max(mean_y - slope * mean_x, 1e-9), slope


class AcceptanceProfile:
    """Mean tokens accepted by trees cut to their first ``n`` nodes, for ``n = 0 .. cap``.

    Example:
        >>> profile = AcceptanceProfile(cap=4)
        >>> profile.observe(requested=4, tree_size=3, path=(0, 2))  # nodes 0 and 2 accepted
        >>> [profile.mean(n) for n in range(5)]
        [0.0, 1.0, 1.0, 2.0, 2.0]
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.sums = [0.0] * (cap + 1)
        self.counts = [0.0] * (cap + 1)

    def observe(self, requested: int, tree_size: int, path: Sequence[int]) -> None:
        """One verified tree: asked for ``requested`` nodes, got ``tree_size``, accepted ``path``.

        For ``n <= tree_size`` the cut tree keeps the accepted nodes with index ``< n`` (a
        prefix of the path, since parents come first); for ``tree_size < n <= requested`` the
        drafter had nothing more to offer, so the tree and its acceptance are the same.
        """
        ordered = sorted(path)
        accepted = 0  # accepted nodes with index < min(n, tree_size)
        for n in range(min(requested, self.cap) + 1):
            while accepted < len(ordered) and ordered[accepted] < min(n, tree_size):
                accepted += 1
            self.sums[n] += accepted
            self.counts[n] += 1

    def mean(self, n: int, prior: AcceptanceProfile | None = None, prior_weight: float = 0.0) -> float | None:
        """E[acc(n)], shrunk toward ``prior``'s mean; None when nothing was seen for ``n``."""
        s, c = self.sums[n], self.counts[n]
        if prior is not None and n <= prior.cap and prior.counts[n] > 0 and prior_weight > 0:
            s += prior_weight * prior.sums[n] / prior.counts[n]
            c += prior_weight
        return s / c if c > 0 else None

    def merge_into(self, other: AcceptanceProfile, max_steps: float) -> None:
        """Add this request's counts to ``other`` (a per-method prior), keeping it recent."""
        for n in range(min(self.cap, other.cap) + 1):
            other.sums[n] += self.sums[n]
            other.counts[n] += self.counts[n]
            if other.counts[n] > max_steps:
                scale = max_steps / other.counts[n]
                other.sums[n] *= scale
                other.counts[n] *= scale


def best_budget(expected: Sequence[float | None], cost: StepCost, sessions: int = 1) -> int:
    """The ``n`` maximising ``(1 + expected[n]) / (a + sessions * b * (1 + n))``; unknown entries
    are skipped.

    ``expected`` is made non-decreasing first (a bigger tree contains the smaller one, so it
    never accepts less; estimates from different steps can say otherwise by chance).

    ``sessions`` is the number of requests sharing the target. A row a request adds to a batched
    pass delays every request in it, and when passes are serialized instead every request also
    waits for the others' passes (which the fitted ``a`` then holds); in both cases the whole
    server's tokens per second is best when each request weighs its rows ``sessions`` times
    (for S similar requests, maximising ``S (1 + acc(n)) / (a_pass + S b (1 + n))``).

    Example:
        >>> cost = StepCost(decay=1.0, min_steps=2)
        >>> for rows in (1, 9):
        ...     cost.observe(rows, 0.020 + 0.002 * rows)
        >>> best_budget([0.0, 0.9, 1.6, 1.8, 1.9, None], cost)  # the 3rd and 4th nodes do not pay
        2
    """
    a, b = cost.line()
    b *= max(1, sessions)
    best_n, best_rate, running = 0, -1.0, 0.0
    for n, value in enumerate(expected):
        if value is None:
            continue
        running = max(running, value)
        rate = (1.0 + running) / (a + b * (1 + n))
        if rate > best_rate * (1 + 1e-9):
            best_n, best_rate = n, rate
    return best_n


class TreeBudget:
    """One request's budget: its acceptance profile, the shared step cost, the method's prior."""

    def __init__(
        self, cap: int, cost: StepCost, prior: AcceptanceProfile | None, config: BudgetConfig = BudgetConfig()
    ) -> None:
        self.profile = AcceptanceProfile(cap)
        self.cost = cost
        self.prior = prior
        self.config = config.validate()
        self._steps = 0

    def choose(self, limit: int, sessions: int = 1) -> int:
        """This step's node budget, at most ``limit`` (the other caps of the step); ``sessions``:
        the requests sharing the target now (see :func:`best_budget`)."""
        limit = max(0, min(limit, self.profile.cap))
        self._steps += 1
        if limit == 0:
            return 0
        expected = [self.profile.mean(n, self.prior, self.config.prior_weight) for n in range(limit + 1)]
        if all(v is None for v in expected[1:]):
            budget = limit  # nothing known yet: see what the whole tree accepts
        else:
            budget = best_budget(expected, self.cost, sessions)
            if self._steps % self.config.explore_every == 0:  # explore: would a bigger tree pay now?
                budget = min(limit, max(2 * budget, budget + EXPLORE_STEP))
        return budget

    def observe(self, requested: int, tree_size: int, path: Sequence[int], step_s: float) -> None:
        """The step's outcome: its tree, its accepted path and its wall time."""
        self.profile.observe(requested, tree_size, path)
        self.cost.observe(1 + tree_size, step_s)

    def finish(self) -> None:
        """Hand this request's acceptance to the method's prior."""
        if self.prior is not None:
            self.profile.merge_into(self.prior, self.config.prior_max_steps)
