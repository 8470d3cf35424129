"""The settings of the computation, in one frozen record (lme4's ``lmerControl``).

A :class:`Control` is given to :class:`~jaxlmm.model.LinearMixedModel` (or
``lmm(..., control=)``), used by its fit and recorded on the result
(``fit.control``); :func:`jaxlmm.bootstrap`, :func:`jaxlmm.pb_test` and the
other refitting functions take the fit's unless given another. None of
these settings changes the model or its estimates beyond the optimizer's
tolerance: they trade memory for speed, or decide how hard the optimizer
tries.

Validation names the field and the rule (``JaxLMMError``); ``Control(...)``
is immutable, ``dataclasses.replace(control, max_iter=500)`` or
``control.replace(max_iter=500)`` makes a changed copy.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
from dataclasses import dataclass

from .errors import JaxLMMError
from .validate import check_bool, check_positive_int


class Hessian(str, enum.Enum):
    """How Newton's method gets its Hessian (a ``str`` enum: the strings work too)."""

    AUTO = "auto"  # the fit's choice: exact below ``Control.bfgs_from`` further random effects, BFGS from there
    EXACT = "exact"  # autodiff's exact Hessian at every iteration
    BFGS = "bfgs"  # forward differences of exact gradients first, then BFGS updates; forward differences
    # again where a stop on the bound, or a step that reaches it, needs true curvature


DENSE_SHARE = {"cpu": 0.1, "gpu": 0.01}
"""Default ``Control.dense_share`` by backend (others as ``"gpu"``): on the CPU where a level's pairs
were measured to cost more than its dense row (MovieLens-1M shape); on a GPU, where matrix products
run near peak and scatters do not, the lead of the arithmetic (not yet measured)."""


FIRST_PASS = 8
"""Newton iterations of the first batched pass of refits not on lanes (``Control.first_pass``)."""


@dataclass(frozen=True)
class Control:
    """Settings of the fit, the cross-products and the batched refits; the defaults are the tested ones.

    Fit (:mod:`jaxlmm.fitting`):

    - ``max_iter``: Newton iterations of one pass (L-BFGS gets five times as many).
    - ``hessian``: ``"auto"``, ``"exact"`` or ``"bfgs"`` (:class:`Hessian`); ``"auto"`` takes BFGS
      updates where the dense Schur complement of the further terms has ``bfgs_from`` columns or
      more (InstEval: 1,142), where each exact Hessian costs more than the iterations it saves.
    - ``restart_step``, ``max_restarts``: the move along a direction of negative curvature a
      non-converged Newton fit restarts from (relative to max(1, |phi|)), and how often.
    - ``boundary_restart``: refit once from the start value of entries that ended at 0 (a
      singular fit), keeping the better optimum.
    - ``convergence_tol``: a fit is converged where the largest projected gradient of the
      criterion is below ``convergence_tol`` (1 + |criterion|) (and the curvature test passes).

    Cross-products (:mod:`jaxlmm.crossprod`, read when the model is built):

    - ``chunk_rows``: rows summed per compiled call (the last chunk is padded).
    - ``pair_chunk``: Schur-complement pairs built per host step (bounds their temporaries).
    - ``dense_share``: a level of the first term with entries in more than this share of the
      further terms' columns enters the Schur update as a dense row of one matrix product
      instead of its pairs of entries (:func:`jaxlmm.crossprod.heavy_levels`); None: by backend
      (:data:`DENSE_SHARE`); above 1: never.

    Parametric bootstrap (:mod:`jaxlmm.replicates`):

    - ``first_pass``: Newton iterations of the batched pass at first; replicates needing more
      are finished by later batched passes. None: ``max_iter`` where the refits run on lanes
      (``cpu_lanes`` below), else :data:`FIRST_PASS`. ``pending_share``: above this share of a
      chunk left unfinished, the batched pass of the later chunks gets twice the iterations.
    - ``escape``: the restart value of a diagonal theta entry stuck at a saddle on the bound.
    - ``chunk_share``: the share of the memory available when a bootstrap starts (an
      accelerator's free memory, the host's on the CPU) one chunk of replicates may use when no
      ``chunk_size`` is given; ``chunk_entries``: a fixed number of float64 entries instead (None:
      from ``chunk_share``); ``cpu_chunk``: the largest default chunk on the CPU backend.
    - ``cpu_map_from``: on the CPU backend, models whose further random effects have this many
      columns or more refit a chunk's replicates one after another inside the compiled program
      instead of vectorized (XLA's CPU scatter-adds are far slower batched).
    - ``lanes``, ``cpu_lanes``, ``lane_rounds``: with ``lanes`` (None: on the CPU backend only),
      vectorized Newton refits (all but the sequential ones, on one device) run a chunk's
      replicates on lanes, each taking up the next replicate as soon as its own has ended
      (:func:`jaxlmm.optimize.newton_lanes`): a replicate needing many iterations holds one lane,
      not a whole batch. On the CPU backend ``cpu_lanes`` lanes (measured: 32 lanes refit
      sleepstudy's replicates faster than 64, 128 or 256) and default chunks of at most
      ``cpu_lanes * lane_rounds`` replicates; on accelerators a ``lane_rounds``-th of the chunk
      (which the device's memory sets). Accelerators, where a pass of a batch of any width costs
      about the same, refit vectorized batches by default (not yet measured with lanes).
    """

    max_iter: int = 200
    hessian: Hessian = Hessian.AUTO
    bfgs_from: int = 1000
    restart_step: float = 0.1
    max_restarts: int = 3
    boundary_restart: bool = True
    convergence_tol: float = 1e-6
    chunk_rows: int = 2**20
    pair_chunk: int = 2**24
    first_pass: int | None = None
    pending_share: float = 0.1
    escape: float = 0.1
    chunk_share: float = 0.25
    chunk_entries: int | None = None
    cpu_chunk: int = 256
    cpu_map_from: int = 256
    lanes: bool | None = None
    cpu_lanes: int = 32
    lane_rounds: int = 128
    dense_share: float | None = None

    def __post_init__(self):
        positive = ("max_iter", "bfgs_from", "chunk_rows", "pair_chunk", "cpu_chunk", "cpu_map_from", "cpu_lanes",
                    "lane_rounds")
        optional = tuple(name for name in ("chunk_entries", "first_pass") if getattr(self, name) is not None)
        for name in positive + optional:
            object.__setattr__(self, name, check_positive_int(getattr(self, name), f"Control: {name}"))
        if not _number(self.chunk_share) or not 0 < self.chunk_share <= 1:
            raise JaxLMMError(f"Control: chunk_share must be a number in (0, 1], not {self.chunk_share!r}.")
        _count(self, "max_restarts")
        for name in ("restart_step", "escape", "convergence_tol"):
            _positive_number(self, name)
        if self.dense_share is not None:
            _positive_number(self, "dense_share")
        if self.lanes is not None:
            object.__setattr__(self, "lanes", check_bool(self.lanes, "Control: lanes"))
        if not _number(self.pending_share) or not 0 <= self.pending_share <= 1:
            raise JaxLMMError(f"Control: pending_share must be a number in [0, 1], not {self.pending_share!r}.")
        object.__setattr__(self, "boundary_restart", check_bool(self.boundary_restart, "Control: boundary_restart"))
        try:
            object.__setattr__(self, "hessian", Hessian(self.hessian))
        except ValueError:
            raise JaxLMMError(
                f"Control: hessian must be one of {[h.value for h in Hessian]}, not {self.hessian!r}."
            ) from None

    def replace(self, **changes) -> "Control":
        """A copy with ``changes`` (field=value), validated."""
        unknown = [k for k in changes if k not in {f.name for f in dataclasses.fields(self)}]
        if unknown:
            raise JaxLMMError(
                f"Control has no setting '{unknown[0]}'; the settings are "
                f"{', '.join(f.name for f in dataclasses.fields(self))}."
            )
        return dataclasses.replace(self, **changes)

    def schur_dense_share(self, backend: str) -> float:
        """``dense_share``, or the default of ``backend`` (:data:`DENSE_SHARE`)."""
        if self.dense_share is not None:
            return float(self.dense_share)
        return DENSE_SHARE.get(backend, DENSE_SHARE["gpu"])

    def newton_hessian(self, q_rest: int) -> Hessian:
        """The Hessian Newton uses for a model whose further random effects have ``q_rest`` columns."""
        if self.hessian is Hessian.AUTO:
            return Hessian.BFGS if q_rest >= self.bfgs_from else Hessian.EXACT
        return self.hessian


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _count(c: Control, name: str) -> None:
    v = getattr(c, name)
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0:
        raise JaxLMMError(f"Control: {name} must be a non-negative integer, not {v!r}.")
    object.__setattr__(c, name, int(v))


def _positive_number(c: Control, name: str) -> None:
    v = getattr(c, name)
    if not _number(v) or v <= 0:
        raise JaxLMMError(f"Control: {name} must be a positive number, not {v!r}.")


def as_control(control) -> Control:
    """``control`` if it is a :class:`Control`, the defaults for None; otherwise a clear error."""
    if control is None:
        return Control()
    if not isinstance(control, Control):
        raise JaxLMMError(f"control must be a jaxlmm.Control (or None), not {type(control).__name__}.")
    return control
