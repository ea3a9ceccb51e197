"""Statistics for bias bounties: prospective, anytime-valid tests of submitted claims.

An outside evaluator submits a *group* (a subgroup of one model's traffic) and a *claim*; lastmile
tests the claim only on outcomes that arrive **after** the submission, so a group picked because it
looked bad on past data is judged on fresh data. Two claims:

``drift``
    the group's error rate is worse than a given baseline ``b`` by more than ``min_gap``.
``disparity``
    the group's error rate is worse than the rest of the model's traffic (the *complement*, at
    the same time) by more than ``min_gap``.

A rate is ``errors / units`` (units: outcomes for an error rate, reference words for WER; an
outcome's errors are capped at ``cap * units`` — edits can exceed words — and its units are
normally at most ``U = max_units``). The unit of independence is the *outcome* (utterance), never the
word: nothing below assumes words are independent or rates are binomial.

The statistic
-------------
Each claim turns its data into increments ``z_k >= -1`` whose conditional mean, given everything
before, is ``<= 0`` while the claim is false (the null). Then for every ``λ in [0, 1)`` the product
``Π_k (1 + λ z_k)`` is a non-negative supermartingale with initial value 1, and so is the mixture
over the λ grid :data:`LAMBDAS` (the one :mod:`monitor.edetector` uses). :class:`EProcess` holds it
in log space. There are **no restarts** (unlike the detectors' CUSUM): the hypothesis is fixed, so by
Ville's inequality ``P(sup_t E_t >= 1/a) <= a`` and ``E_τ`` is an e-value at *any* stopping time τ
(optional stopping) — the claim may be decided whenever the evidence arrives.

*Drift* (one increment per group outcome, exactly the detectors' increment)::

    z = (min(e, cap·u) - (b + gap)·u) / ((b + gap) · max(U, u))                 >= -1

Null "rate <= b + gap" (per outcome: ``E[e | u, past] <= (b + gap)·u``) gives ``E[z | past] <= 0``.

*Disparity* (block increments, the README's design). Outcomes after the submission are cut into
blocks; a block closes at a group outcome once complement units have arrived since the previous
close, so a block holds ``k >= 1`` group outcomes (usually one: the group outcomes that arrived before
any complement outcome wait in the open block) and the complement outcomes that arrived since the
previous close — all of them *before* the closing group outcome. With ``r̂`` the block's complement
rate (capped errors / units) and the block's group sums ``E_g, u_g, k``::

    a = E_g - r̂ · u_g                 (the group's excess errors over the complement's rate)
    z = (a - gap · u_g) / ((cap + gap) · max(U·k, u_g))                           >= -1

``z >= -1`` because ``E_g >= 0`` and ``r̂ <= cap`` — the lower bound holds whatever ``r̂`` turns out to
be, which is why the scale is ``cap + gap`` and not the (random) ``r̂ + gap``: a scale that depends on
``r̂`` makes the increment non-linear in ``r̂`` and biases it upward (Jensen). Validity: which outcomes
arrive, in which group and with how many units, does not depend on their errors (the block
boundaries are a function of membership and units only); given those, errors are conditionally
independent with ``E[e | u] = p·u`` where ``p`` is the rate of the outcome's side (group or
complement) at that time — overdispersed per-outcome rates are fine as long as they do not depend
on ``u``. Then ``E[r̂ | block layout] = p_c`` exactly (a unit-weighted average of complement rates:
the ratio estimator is conditionally unbiased given the units, so *no correction for estimating the
complement rate is needed* — it only adds variance, a factor about ``1 + share/(1-share)``), and
``E[z | past, layout] = u_g (p_g - p_c - gap) / scale <= 0`` under the null "group rate <= complement
rate + gap". The rates may move arbitrarily *between* blocks — the model-wide rate may drift, step
or cycle and the null stays true — because the two sides are compared inside each block, a few
outcomes apart in time. What is assumed is that the common rate does not move by a material
amount *within* one block (about ``1/share`` outcomes of traffic); a step inside a block biases only
that block. The test suite checks validity under a square-wave common rate (steps of 0.2 every
2,000 outcomes), a cycle and a ramp, and shows that the naive plug-in (complement rate estimated from
all complement outcomes since the submission) fails under the same drift.

Confidence sequence
-------------------
:class:`GapCS` reports the gap ``θ`` (group rate minus complement rate, or minus ``b``) with an interval
valid at all times at once. It is the same family, inverted: for each ``γ`` on a grid it runs the
mixture e-process of the null ``θ <= γ`` (increments ``(a - γw)/((γ - lo)m)``) and of ``θ >= γ``
(``(γw - a)/((hi - γ)m)``), where ``a ∈ [lo·w, hi·w]`` is the increment's excess, ``w`` its units and
``m >= w`` its normaliser. ``γ`` is excluded once its e-process has ever reached ``2/α``. Both families
are monotone in ``γ``, so the excluded sets are half-lines and the interval is ``(largest γ excluded
from below, smallest γ excluded from above)``; grid points are ``step`` apart and the interval is
rounded outward, so ``P(θ leaves the interval at any time) <= α`` whenever the gap is constant.

Many submissions: e-LOND
------------------------
Xu & Ramdas (2024), "Online multiple testing with e-values" (AISTATS): with ``γ_t >= 0``,
``Σ γ_t <= 1``, hypothesis ``t`` is rejected when its e-value reaches ``1/α_t`` with
``α_t = α γ_t (D + 1)``, ``D`` the number of discoveries so far; FDR <= α under arbitrary dependence.
Here the decision for a hypothesis can come at any time after it arrives, so :class:`ELond` fixes
``α_t`` at *registration*, with ``D = D_{t-1}`` the discoveries made before hypothesis ``t`` arrived.
The proof goes through unchanged: discoveries are never withdrawn, so if ``t`` is rejected the final
number of rejections is at least ``D_{t-1} + 1``; with ``τ_t`` the first time ``E^t >= 1/α_t``,
``1{t rejected} / |R| <= α_t E^t_{τ_t} / (D_{t-1} + 1) = α γ_t E^t_{τ_t}``, and ``E[E^t_{τ_t}] <= 1`` for
a null by optional stopping (``α_t`` is known when ``t``'s e-process starts, so ``τ_t`` is a stopping
time of the traffic's filtration). Summing over nulls, FDR <= α Σ γ_t <= α — whatever the
submissions are, however they overlap, and however they were chosen from past data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from monitor.edetector import LAMBDAS

FloatArray = NDArray[np.float64]

__all__ = [
    "LAMBDAS",
    "DisparityClaim",
    "DriftClaim",
    "ELond",
    "EProcess",
    "GapCS",
    "Verdict",
    "decide",
    "disparity_increments",
    "drift_increments",
    "gamma_sequence",
    "log_e_paths",
]

_NEG_TOL = 1e-9  # increments a hair below -1 from rounding are clipped; anything lower is a bug


def _as_lambdas(lambdas: Sequence[float]) -> FloatArray:
    lam = np.asarray(list(lambdas), dtype=np.float64)
    if lam.ndim != 1 or lam.size == 0 or np.any(lam < 0) or np.any(lam >= 1):
        raise ValueError(f"lambdas must lie in [0, 1), got {list(lambdas)}")
    return lam


def _check_z(z: FloatArray) -> FloatArray:
    if z.size and float(np.min(z)) < -1.0 - _NEG_TOL:
        raise ValueError(f"increment {float(np.min(z))} is below -1: the bound the guarantee rests on")
    return np.maximum(z, -1.0)


def log_e_paths(z: ArrayLike, lambdas: Sequence[float] = LAMBDAS) -> FloatArray:
    """Log of the mixture e-process after each increment, vectorised over leading axes.

    ``z`` has shape ``(..., T)``; the result has the same shape, entry ``t`` being
    ``log mean_λ Π_{s<=t} (1 + λ z_s)``. Pad ragged runs with ``z = 0`` (a factor of 1).
    """
    zz = _check_z(np.asarray(z, dtype=np.float64))
    lam = _as_lambdas(lambdas)
    out: FloatArray | None = None
    for lm in lam:
        path = np.cumsum(np.log1p(lm * zz), axis=-1)
        out = path if out is None else np.logaddexp(out, path)
    assert out is not None
    return out - math.log(lam.size)


class EProcess:
    """Mixture e-process ``mean_λ Π_t (1 + λ z_t)`` over increments ``z_t >= -1``, in log space.

    >>> ep = EProcess()
    >>> ep.update([0.5, 0.5, -0.2])
    >>> round(ep.e, 4) == round(float(np.mean([(1 + l * .5) ** 2 * (1 - l * .2) for l in LAMBDAS])), 4)
    True
    """

    def __init__(self, lambdas: Sequence[float] = LAMBDAS):
        self.lambdas = _as_lambdas(lambdas)
        self._logw = np.zeros(self.lambdas.size)
        self.log_e_max = 0.0  # running supremum of log E_t (E_0 = 1): what a decision uses
        self.n = 0  # increments so far

    @property
    def log_e(self) -> float:
        top = float(np.max(self._logw))
        return top + math.log(float(np.mean(np.exp(self._logw - top))))

    @property
    def e(self) -> float:
        return math.exp(self.log_e)

    def update(self, z: float | ArrayLike) -> None:
        """Multiply in one increment or a sequence of them (in arrival order)."""
        zz = _check_z(np.atleast_1d(np.asarray(z, dtype=np.float64)).ravel())
        if zz.size == 0:
            return
        steps = np.log1p(np.outer(zz, self.lambdas))  # (T, K)
        paths = self._logw + np.cumsum(steps, axis=0)
        top = np.max(paths, axis=1)
        mix = top + np.log(np.mean(np.exp(paths - top[:, None]), axis=1))
        self.log_e_max = max(self.log_e_max, float(np.max(mix)))
        self._logw = paths[-1].copy()
        self.n += int(zz.size)

    def state(self) -> dict[str, Any]:
        return {"lambdas": self.lambdas.tolist(), "log_wealth": self._logw.tolist(),
                "log_e_max": self.log_e_max, "n": self.n}

    @classmethod
    def restore(cls, state: dict[str, Any]) -> EProcess:
        ep = cls(state["lambdas"])
        ep._logw = np.asarray(state["log_wealth"], dtype=np.float64)
        ep.log_e_max = float(state["log_e_max"])
        ep.n = int(state["n"])
        return ep


class GapCS:
    """Anytime-valid confidence sequence for a gap θ, by inverting mixture e-processes on a grid.

    Fed with ``(a, w, m)`` per increment: ``a`` the excess (``E[a | past] = θ·w``), known to lie in
    ``[lo·w, hi·w]``, and a normaliser ``m >= w`` (see the module docstring). The interval at level
    ``α`` (chosen at query time, not after looking) holds at all times with probability ``>= 1 - α``.

    >>> cs = GapCS(lo=-0.1, hi=0.9, step=0.01)
    >>> cs.interval(0.05)
    (-0.1, 0.9)
    """

    def __init__(self, lo: float, hi: float, step: float = 0.0025, lambdas: Sequence[float] = LAMBDAS,
                 points: Sequence[float] = (), settle_alpha: float | None = None):
        """``points``: values of the gap tested exactly besides the grid (a claim's ``min_gap``,
        so that "the gap is below it" is decided at the claim's own value, whatever the step).
        ``settle_alpha``: intervals are asked for at levels ``>= settle_alpha`` only; a grid
        value rejected at that level stays rejected, so its wealth is no longer updated (most
        of the grid, once the interval has narrowed)."""
        if not hi > lo:
            raise ValueError(f"need lo < hi, got {lo}, {hi}")
        if not 0 < step < hi - lo:
            raise ValueError(f"step must lie in (0, hi - lo), got {step}")
        self.lo, self.hi, self.step = float(lo), float(hi), float(step)
        self.lambdas = _as_lambdas(lambdas)
        n_pts = int(math.ceil((self.hi - self.lo) / self.step)) - 1
        grid = self.lo + self.step * np.arange(1, n_pts + 1)
        self.points = tuple(float(p) for p in points if self.lo < p < self.hi)
        self.grid = np.union1d(grid[grid < self.hi], self.points)
        g, k = self.grid.size, self.lambdas.size
        self._low: FloatArray = np.zeros((g, k))  # log-wealth of the nulls θ <= γ
        self._up: FloatArray = np.zeros((g, k))  # log-wealth of the nulls θ >= γ
        self._low_max = np.zeros(g)
        self._up_max = np.zeros(g)
        self.settle_alpha = settle_alpha
        self._settled = math.log(2.0 / settle_alpha) if settle_alpha is not None else math.inf
        self._low_live = np.arange(g)  # grid positions still updated, per direction
        self._up_live = np.arange(g)
        self.sum_a = 0.0
        self.sum_w = 0.0
        self.n = 0

    @property
    def estimate(self) -> float:
        """Point estimate Σa / Σw (nan before any units)."""
        return self.sum_a / self.sum_w if self.sum_w > 0 else float("nan")

    def _gain(self, z: FloatArray) -> FloatArray:
        """Log-wealth gained over the increments ``z`` (T, G), per grid value and λ: (G, K)."""
        return np.stack([np.log1p(lm * z).sum(axis=0) for lm in self.lambdas], axis=1)

    def _mark(self) -> None:
        """The mixtures' running maxima take in their values now. Ville's inequality holds for the
        supremum over all times, so the maximum over the times the interval is asked for (the
        verdict's decision points) keeps the coverage, at a fraction of the cost of tracking
        every step."""
        log_k = math.log(self.lambdas.size)
        for logw, running in ((self._low, self._low_max), (self._up, self._up_max)):
            top = logw.max(axis=1)
            mix = top + np.log(np.exp(logw - top[:, None]).sum(axis=1)) - log_k
            np.maximum(running, mix, out=running)
        self._low_live = np.flatnonzero(self._low_max < self._settled)
        self._up_live = np.flatnonzero(self._up_max < self._settled)

    def update(self, a: float | ArrayLike, w: float | ArrayLike, m: float | ArrayLike, chunk: int = 512) -> None:
        aa = np.atleast_1d(np.asarray(a, dtype=np.float64)).ravel()
        ww = np.broadcast_to(np.asarray(w, dtype=np.float64), aa.shape)
        mm = np.broadcast_to(np.asarray(m, dtype=np.float64), aa.shape)
        if np.any(mm <= 0) or np.any(ww > mm * (1 + 1e-12)) or np.any(ww < 0):
            raise ValueError("need 0 <= w <= m and m > 0")
        slack = 1e-9 * (np.abs(self.lo) + np.abs(self.hi) + 1) * ww
        if np.any(aa < self.lo * ww - slack) or np.any(aa > self.hi * ww + slack):
            raise ValueError("excess a outside [lo·w, hi·w]")
        low_live, up_live = self._low_live, self._up_live
        g_low, g_up = self.grid[None, low_live], self.grid[None, up_live]
        for s in range(0, aa.size, chunk):
            a_, w_, m_ = aa[s:s + chunk, None], ww[s:s + chunk, None], mm[s:s + chunk, None]
            if low_live.size:
                z_low = np.maximum((a_ - g_low * w_) / ((g_low - self.lo) * m_), -1.0)
                self._low[low_live] += self._gain(z_low)
            if up_live.size:
                z_up = np.maximum((g_up * w_ - a_) / ((self.hi - g_up) * m_), -1.0)
                self._up[up_live] += self._gain(z_up)
        self.sum_a += float(np.sum(aa))
        self.sum_w += float(np.sum(ww))
        self.n += int(aa.size)

    def interval(self, alpha: float = 0.05) -> tuple[float, float]:
        """``(lower, upper)`` containing θ at all times with probability ``>= 1 - alpha``: at every
        time it is asked for (and it only narrows between them)."""
        if not 0 < alpha < 1:
            raise ValueError("alpha must lie in (0, 1)")
        if self.settle_alpha is not None and alpha < self.settle_alpha:
            raise ValueError(f"this sequence gives intervals at levels >= {self.settle_alpha} only")
        self._mark()
        thr = math.log(2.0 / alpha)
        low_rej = np.flatnonzero(self._low_max >= thr)
        up_rej = np.flatnonzero(self._up_max >= thr)
        lower = float(self.grid[low_rej[-1]]) if low_rej.size else self.lo
        upper = float(self.grid[up_rej[0]]) if up_rej.size else self.hi
        return lower, upper

    def state(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "step": self.step, "lambdas": self.lambdas.tolist(),
                "points": self.points, "settle_alpha": self.settle_alpha, "low": self._low.tolist(),
                "up": self._up.tolist(), "low_max": self._low_max.tolist(), "up_max": self._up_max.tolist(),
                "sum_a": self.sum_a, "sum_w": self.sum_w, "n": self.n}

    @classmethod
    def restore(cls, state: dict[str, Any]) -> GapCS:
        cs = cls(state["lo"], state["hi"], state["step"], state["lambdas"], state.get("points", ()),
                 state.get("settle_alpha"))
        cs._low = np.asarray(state["low"], dtype=np.float64).reshape(cs.grid.size, cs.lambdas.size)
        cs._up = np.asarray(state["up"], dtype=np.float64).reshape(cs.grid.size, cs.lambdas.size)
        cs._low_max = np.asarray(state["low_max"], dtype=np.float64)
        cs._up_max = np.asarray(state["up_max"], dtype=np.float64)
        cs.sum_a, cs.sum_w, cs.n = float(state["sum_a"]), float(state["sum_w"]), int(state["n"])
        cs._low_live = np.flatnonzero(cs._low_max < cs._settled)
        cs._up_live = np.flatnonzero(cs._up_max < cs._settled)
        return cs


# ---------------------------------------------------------------------------- increments


def _capped(errors: ArrayLike, units: ArrayLike, cap: float) -> tuple[FloatArray, FloatArray]:
    e = np.atleast_1d(np.asarray(errors, dtype=np.float64)).ravel()
    u = np.atleast_1d(np.asarray(units, dtype=np.float64)).ravel()
    if e.shape != u.shape:
        raise ValueError("errors and units must have the same length")
    if np.any(e < 0) or np.any(u < 0) or not (np.all(np.isfinite(e)) and np.all(np.isfinite(u))):
        raise ValueError("errors and units must be finite and non-negative")
    return np.minimum(e, cap * u), u


def drift_increments(errors: ArrayLike, units: ArrayLike, baseline: float, *, cap: float = 1.0,
                     max_units: float = 1.0) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-outcome ``(a, w, m)`` for a drift claim: ``a = min(e, cap·u) - b·u``, ``w = u``, ``m = max(U, u)``.

    The claim's increment is ``(a - gap·w) / ((b + gap)·m)``.
    """
    e, u = _capped(errors, units, cap)
    return e - baseline * u, u, np.maximum(max_units, u)


_Carry = tuple[float, float, float, float, float]  # open block: group errors, units, count; complement errors, units
_EMPTY: _Carry = (0.0, 0.0, 0.0, 0.0, 0.0)


def _disparity_blocks(errors: ArrayLike, units: ArrayLike, in_group: ArrayLike, cap: float, max_units: float,
                      carry: _Carry) -> tuple[FloatArray, FloatArray, FloatArray, _Carry]:
    e, u = _capped(errors, units, cap)
    g = np.atleast_1d(np.asarray(in_group, dtype=bool)).ravel()
    if g.shape != e.shape:
        raise ValueError("in_group must have the same length as errors")
    ge0, gu0, gk0, ce0, cu0 = carry
    ge = ge0 + np.cumsum(np.where(g, e, 0.0))
    gu = gu0 + np.cumsum(np.where(g, u, 0.0))
    gk = gk0 + np.cumsum(g, dtype=np.float64)
    ce = ce0 + np.cumsum(np.where(g, 0.0, e))
    cu = cu0 + np.cumsum(np.where(g, 0.0, u))
    pos = np.flatnonzero(g)
    cu_at = cu[pos]
    # a group outcome closes the block iff complement units arrived since the previous group outcome
    # (and, for the first one in this batch, since the last close: cu counts from there)
    closes = pos[cu_at > np.concatenate(([0.0], cu_at[:-1]))]
    if closes.size == 0:
        if e.size == 0:
            return np.zeros(0), np.zeros(0), np.zeros(0), carry
        return np.zeros(0), np.zeros(0), np.zeros(0), (float(ge[-1]), float(gu[-1]), float(gk[-1]),
                                                       float(ce[-1]), float(cu[-1]))

    def block(c: FloatArray) -> FloatArray:
        at = c[closes]
        return np.diff(np.concatenate(([0.0], at)))

    es, us, ks, ec, uc = block(ge), block(gu), block(gk), block(ce), block(cu)
    r_hat = np.minimum(ec / uc, cap)
    last = int(closes[-1])
    new_carry: _Carry = (float(ge[-1] - ge[last]), float(gu[-1] - gu[last]), float(gk[-1] - gk[last]),
                         float(ce[-1] - ce[last]), float(cu[-1] - cu[last]))
    return es - r_hat * us, us, np.maximum(max_units * ks, us), new_carry


def disparity_increments(errors: ArrayLike, units: ArrayLike, in_group: ArrayLike, *, cap: float = 1.0,
                         max_units: float = 1.0) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Block ``(a, w, m)`` for a disparity claim over a stream of the model's outcomes (after submission).

    ``a = E_g - r̂·u_g`` (group errors over the block's complement rate), ``w = u_g``,
    ``m = max(U·k, u_g)``; the claim's increment is ``(a - gap·w) / ((cap + gap)·m)``. The last,
    still open block is left out.
    """
    a, w, m, _ = _disparity_blocks(errors, units, in_group, cap, max_units, _EMPTY)
    return a, w, m


# ---------------------------------------------------------------------------- claims


class _Claim:
    """Shared by the two claims: an e-process for the claim and a confidence sequence for the gap."""

    kind: str

    def __init__(self, min_gap: float, cap: float, max_units: float, lo: float, hi: float,
                 cs_step: float | None, lambdas: Sequence[float]):
        if cap <= 0 or max_units <= 0:
            raise ValueError("cap and max_units must be positive")
        if not lo < min_gap < hi:
            raise ValueError(f"min_gap must lie in ({lo}, {hi}) for this claim")
        self.min_gap, self.cap, self.max_units = float(min_gap), float(cap), float(max_units)
        self._lo = lo
        self.eprocess = EProcess(lambdas)
        # verdicts ask for 95% intervals only (decide's interval_alpha): settled values stop costing
        self.cs = GapCS(lo, hi, cs_step, lambdas, points=(min_gap,), settle_alpha=0.05) if cs_step is not None \
            else None
        self.n = 0  # group outcomes seen since the submission

    def _feed(self, a: FloatArray, w: FloatArray, m: FloatArray) -> None:
        if a.size == 0:
            return
        self.eprocess.update((a - self.min_gap * w) / ((self.min_gap - self._lo) * m))
        if self.cs is not None:
            self.cs.update(a, w, m)

    @property
    def log_e(self) -> float:
        return self.eprocess.log_e

    @property
    def e(self) -> float:
        return self.eprocess.e

    @property
    def log_e_max(self) -> float:
        return self.eprocess.log_e_max

    def interval(self, alpha: float = 0.05) -> tuple[float, float]:
        if self.cs is None:
            raise ValueError("this claim was built without a confidence sequence (cs_step=None)")
        return self.cs.interval(alpha)

    def _base_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "min_gap": self.min_gap, "cap": self.cap, "max_units": self.max_units,
                "n": self.n, "eprocess": self.eprocess.state(),
                "cs": self.cs.state() if self.cs is not None else None}

    def _restore_base(self, state: dict[str, Any]) -> None:
        self.n = int(state["n"])
        self.eprocess = EProcess.restore(state["eprocess"])
        self.cs = GapCS.restore(state["cs"]) if state["cs"] is not None else None


class DriftClaim(_Claim):
    """"The group's rate exceeds ``baseline + min_gap``", fed with the group's outcomes only.

    The gap is ``θ = rate - baseline``; its confidence sequence lives on ``(-b, cap - b)``.
    """

    kind = "drift"

    def __init__(self, baseline: float, min_gap: float, *, cap: float = 1.0, max_units: float = 1.0,
                 cs_step: float | None = 0.01, lambdas: Sequence[float] = LAMBDAS):
        if not 0 <= baseline < cap:
            raise ValueError("baseline must lie in [0, cap)")
        self.baseline = float(baseline)
        super().__init__(min_gap, cap, max_units, -self.baseline, cap - self.baseline, cs_step, lambdas)

    def observe(self, errors: float | ArrayLike, units: float | ArrayLike = 1.0) -> None:
        """The group's outcomes after the submission, in arrival order (scalars or arrays)."""
        e = np.atleast_1d(np.asarray(errors, dtype=np.float64))
        u = np.broadcast_to(np.asarray(units, dtype=np.float64), e.shape)
        a, w, m = drift_increments(e, u, self.baseline, cap=self.cap, max_units=self.max_units)
        self.n += int(a.size)
        self._feed(a, w, m)

    def state(self) -> dict[str, Any]:
        return {**self._base_state(), "baseline": self.baseline}

    @classmethod
    def restore(cls, state: dict[str, Any]) -> DriftClaim:
        c = cls(state["baseline"], state["min_gap"], cap=state["cap"], max_units=state["max_units"], cs_step=None,
                lambdas=state["eprocess"]["lambdas"])
        c._restore_base(state)
        return c


class DisparityClaim(_Claim):
    """"The group's rate exceeds the rest of the model's + ``min_gap``", fed with all of the model's traffic.

    The gap is ``θ = group rate - complement rate``; its confidence sequence lives on ``(-cap, cap)``.
    """

    kind = "disparity"

    def __init__(self, min_gap: float, *, cap: float = 1.0, max_units: float = 1.0,
                 cs_step: float | None = 0.01, lambdas: Sequence[float] = LAMBDAS):
        super().__init__(min_gap, cap, max_units, -cap, cap, cs_step, lambdas)
        self._carry: _Carry = _EMPTY
        self.blocks = 0

    def observe(self, errors: float | ArrayLike, units: float | ArrayLike, in_group: bool | ArrayLike) -> None:
        """The model's outcomes after the submission, in arrival order, each flagged in/out of the group."""
        e = np.atleast_1d(np.asarray(errors, dtype=np.float64))
        u = np.broadcast_to(np.asarray(units, dtype=np.float64), e.shape)
        g = np.broadcast_to(np.asarray(in_group, dtype=bool), e.shape)
        a, w, m, self._carry = _disparity_blocks(e, u, g, self.cap, self.max_units, self._carry)
        self.n += int(np.count_nonzero(g))
        self.blocks += int(a.size)
        self._feed(a, w, m)

    def state(self) -> dict[str, Any]:
        return {**self._base_state(), "carry": list(self._carry), "blocks": self.blocks}

    @classmethod
    def restore(cls, state: dict[str, Any]) -> DisparityClaim:
        c = cls(state["min_gap"], cap=state["cap"], max_units=state["max_units"], cs_step=None,
                lambdas=state["eprocess"]["lambdas"])
        c._restore_base(state)
        ge, gu, gk, ce, cu = (float(x) for x in state["carry"])
        c._carry = (ge, gu, gk, ce, cu)
        c.blocks = int(state["blocks"])
        return c


# ---------------------------------------------------------------------------- e-LOND


def _tail_log2(n: int) -> float:  # Σ_{t>n} 1/((t+1) ln²(t+1)) <= ∫_n^∞ dx/((x+1) ln²(x+1)) = 1/ln(n+1)
    return 1.0 / math.log(n + 1)


def _tail_jm(n: int) -> float:  # Σ_{t>n} ln t/(t e^√ln t) <= ∫_n^∞ = 2 e^-s (s³+3s²+6s+6), s = √ln n (decreasing for t >= 3)
    s = math.sqrt(math.log(n))
    return 2.0 * math.exp(-s) * (s ** 3 + 3 * s ** 2 + 6 * s + 6)


def _raw_log2(t: FloatArray) -> FloatArray:
    return 1.0 / ((t + 1) * np.log(t + 1) ** 2)


def _raw_jm(t: FloatArray) -> FloatArray:
    return np.log(np.maximum(t, 2)) / (t * np.exp(np.sqrt(np.log(t))))


_SEQUENCES: dict[str, tuple[Callable[[FloatArray], FloatArray], Callable[[int], float]]] = {
    "log2": (_raw_log2, _tail_log2),
    "jm": (_raw_jm, _tail_jm),
}
_NORMALISERS: dict[str, float] = {}


def gamma_sequence(name: str = "jm") -> Callable[[int], float]:
    """``t -> γ_t`` (``t = 1, 2, …``), non-negative with ``Σ_t γ_t <= 1`` (proved, not truncated).

    ``"jm"``: ``∝ ln(max(t,2)) / (t e^√ln t)`` (Javanmard & Montanari; the default in Xu & Ramdas' code),
    slow decay — spends more on the hundreds-to-thousands of submissions a bounty expects.
    ``"log2"``: ``∝ 1/((t+1) ln²(t+1))``, front-loaded (γ_1 ≈ 0.49).
    ``"p2"``: ``6/(π² t²)``, very front-loaded.
    The normaliser is the partial sum to 10⁶ plus an integral bound on the tail, so the sum is ``<= 1``.
    """
    if name == "p2":
        return lambda t: 6.0 / (math.pi ** 2 * t * t)
    if name not in _SEQUENCES:
        raise ValueError(f"unknown gamma sequence {name!r}: use 'jm', 'log2', 'p2' or a callable")
    raw, tail = _SEQUENCES[name]
    if name not in _NORMALISERS:
        n = 1_000_000
        _NORMALISERS[name] = float(np.sum(raw(np.arange(1, n + 1, dtype=np.float64)))) + tail(n)
    z = _NORMALISERS[name]
    return lambda t: float(raw(np.asarray([float(t)]))[0]) / z


class ELond:
    """e-LOND over every submission ever, levels fixed at registration.

    >>> fdr = ELond(alpha=0.05, gamma="log2")
    >>> lvl = fdr.register("first")
    >>> round(lvl, 5)
    0.02466
    >>> fdr.confirm("first", log_e=math.log(1 / lvl) + 0.1)
    True
    >>> round(fdr.register("second") / fdr.gamma(2), 4)      # boosted: α γ_2 (D + 1), D = 1
    0.1
    """

    def __init__(self, alpha: float = 0.05, gamma: str | Callable[[int], float] = "jm"):
        if not 0 < alpha < 1:
            raise ValueError("alpha must lie in (0, 1)")
        self.alpha = float(alpha)
        self.gamma_name = gamma if isinstance(gamma, str) else "custom"
        self.gamma = gamma_sequence(gamma) if isinstance(gamma, str) else gamma
        self.keys: list[str] = []
        self.levels: list[float] = []
        self.discoveries: list[str] = []  # in the order they were made

    @property
    def n_registered(self) -> int:
        return len(self.keys)

    def register(self, key: str | None = None) -> float:
        """Register the next hypothesis; return its level ``α_t = α γ_t (D + 1)`` (fixed from now on)."""
        key = str(len(self.keys)) if key is None else key
        if key in self.keys:
            raise ValueError(f"hypothesis {key!r} is already registered")
        t = len(self.keys) + 1
        level = min(1.0, self.alpha * self.gamma(t) * (len(self.discoveries) + 1))
        self.keys.append(key)
        self.levels.append(level)
        return level

    def level(self, key: str) -> float:
        return self.levels[self.keys.index(key)]

    def confirm(self, key: str, log_e: float) -> bool:
        """Record a discovery if the hypothesis' e-process has reached ``1/α_t`` (its running sup counts).

        Returns whether the hypothesis is a discovery (idempotent).
        """
        if key in self.discoveries:
            return True
        if log_e >= math.log(1.0 / self.level(key)):
            self.discoveries.append(key)
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "gamma": self.gamma_name, "keys": list(self.keys), "levels": list(self.levels),
                "discoveries": list(self.discoveries)}

    @classmethod
    def restore(cls, state: dict[str, Any], gamma: Callable[[int], float] | None = None) -> ELond:
        if state["gamma"] == "custom" and gamma is None:
            raise ValueError("this e-LOND used a custom gamma: pass the same callable to restore")
        fdr = cls(state["alpha"], gamma if gamma is not None else state["gamma"])
        fdr.keys, fdr.levels = list(state["keys"]), [float(x) for x in state["levels"]]
        fdr.discoveries = list(state["discoveries"])
        return fdr


# ---------------------------------------------------------------------------- verdicts

Status = Literal["pending", "confirmed", "not_confirmed", "refuted", "untestable"]


class _Evidence(Protocol):
    @property
    def log_e_max(self) -> float: ...


@dataclass(frozen=True)
class Verdict:
    status: Status
    e_value: float  # sup of the claim's e-process so far (the e-value at the decision's stopping time)
    threshold: float  # 1/α_t
    interval: tuple[float, float] | None  # anytime-valid interval for the gap, when available
    n: int  # group outcomes since the submission


def decide(eprocess: _Evidence, level: float, n: int, budget_max_outcomes: int, deadline_passed: bool,
           min_gap: float, min_outcomes_for_testability: int, *, interval_alpha: float = 0.05) -> Verdict:
    """The claim's status now. Checked in this order; the first terminal status reached is final
    (stop feeding the claim then — later data can only be ignored, never used to revise it).

    ``confirmed``
        the e-process has reached ``1/level`` (``level`` = the claim's e-LOND ``α_t``) at some time:
        with every confirmation ever made, the expected share of confirmed claims that are false
        is at most e-LOND's α.
    ``refuted``
        the anytime-valid interval for the gap excludes ``min_gap`` and all above it: the gap is
        smaller than claimed (a true claim is refuted with probability at most ``interval_alpha/2``).
    ``untestable``
        the deadline passed (or the budget is smaller than the minimum) with fewer than
        ``min_outcomes_for_testability`` group outcomes: no verdict on the claim either way.
    ``not_confirmed``
        budget (``n >= budget_max_outcomes`` group outcomes) or deadline reached without enough
        evidence; ``interval`` says what is known about the gap (it may still exceed ``min_gap``).
    ``pending``
        none of the above yet.

    ``eprocess`` is a :class:`DriftClaim` / :class:`DisparityClaim` (or a bare :class:`EProcess`, which
    has no interval: then ``refuted`` is never returned and ``interval`` is ``None``).
    """
    if not 0 < level <= 1:
        raise ValueError("level must lie in (0, 1]")
    log_e = float(eprocess.log_e_max)
    threshold = 1.0 / level
    interval_of = getattr(eprocess, "interval", None)
    interval: tuple[float, float] | None = None
    if interval_of is not None and getattr(eprocess, "cs", True) is not None:
        interval = interval_of(interval_alpha)
    e_value = math.exp(min(log_e, 700.0))
    if log_e >= math.log(threshold):
        return Verdict("confirmed", e_value, threshold, interval, n)
    if interval is not None and interval[1] <= min_gap:  # (min_gap itself rejected: the gap is below it)
        return Verdict("refuted", e_value, threshold, interval, n)
    if deadline_passed or n >= budget_max_outcomes:
        status: Status = "untestable" if n < min_outcomes_for_testability else "not_confirmed"
        return Verdict(status, e_value, threshold, interval, n)
    return Verdict("pending", e_value, threshold, interval, n)
