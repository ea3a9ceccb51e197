"""The engine's state, as the compiled kernel and everything else read it: one row per
(slice × metric) of named float columns (:class:`F`), the parameter vector (:class:`P`), and
how a baseline came to be (:class:`Source`).

Kept apart from :mod:`monitor.kernel` so that reading the state (the slice table, the
exposition, checkpoints) never needs numba, and the engine can start before the compiled
kernel is loaded (:func:`monitor.kernel.preload`).
"""

from __future__ import annotations

import hashlib
import math
from enum import IntEnum, auto

import numpy as np


class F(IntEnum):
    """Columns of a state row (one row per slice × metric). Adding a field is one line here."""

    N = 0  # cumulative outcomes
    E = auto()  # ... errors
    U = auto()  # ... units
    WN = auto()  # exponentially decayed window sums: outcomes, errors, units, squares, cross
    WE = auto()
    WU = auto()
    WE2 = auto()
    WU2 = auto()
    WEU = auto()
    WW = auto()  # decayed sum of squared weights (for the window's standard error)
    BASE = auto()  # baseline (NaN: none)
    BSRC = auto()  # where it came from: a Source
    BANC = auto()  # inherited: the ancestor slice id it came from (-1 otherwise)
    RN = auto()  # reference-period accumulators: outcomes, errors, units, squares, cross
    RE = auto()
    RU = auto()
    RE2 = auto()
    RU2 = auto()
    REU = auto()
    FIRST = auto()  # event time of the row's first outcome (NaN: none yet)
    MIN_N = auto()  # per-row settings
    TOL_D = auto()
    REL_D = auto()
    TOL_P = auto()  # < 0: disparity disabled for this model
    H = auto()  # the fire threshold ln(ARL): its share of the false-alarm budget (see engine.thresholds)
    REL_P = auto()
    ALERTABLE = auto()
    DSTATE = auto()  # 0 ok, 1 firing
    PSTATE = auto()
    SMN = auto()  # population / own sums at the last disparity block close
    SME = auto()
    SMU = auto()
    SON = auto()
    SOE = auto()
    SOU = auto()
    CWE = auto()  # decayed complement block sums (the disparity reference)
    CWU = auto()
    BLOCKS = auto()
    # model-level state, kept in the population row of the first metric
    MREF_SEEN = auto()  # outcomes of the model inside its reference period so far
    MREF_CLOSED = auto()  # event time the model's reference period closed (NaN: still open)


NFIELDS = len(F)


class Source(IntEnum):
    """Where a row's baseline came from (``F.BSRC``)."""

    PENDING = 0  # none yet: the model's reference period is still open
    FILE = 1  # the baseline file (a service card)
    REFERENCE = 2  # learned from the model's reference period
    INHERITED = 3  # the largest of the nearest ancestors' own baselines
    NONE = 4  # no baseline to be had (or drift is off for the model): never drift-tested


SOURCE_NAMES = {Source.FILE: "file", Source.REFERENCE: "reference", Source.INHERITED: "inherited"}



class Ref(IntEnum):
    """How a model's reference period is delimited."""

    NONE = 0
    OUTCOMES = 1
    TIME = 2


class P(IntEnum):
    """Entries of the parameter vector."""

    CAP = 0
    UMAX = auto()
    GAMMA = auto()
    HR = auto()
    RESOLVE = auto()
    REFMODE = auto()
    REFN = auto()
    REFSTART = auto()
    REFEND = auto()
    DRIFT = auto()
    DISP = auto()


NPARAMS = len(P)

#: two-sided normal quantile for the windowed estimate's pointwise 95% interval
_Z95 = 1.959964


def window_interval(row: np.ndarray) -> tuple[float, float, float] | None:
    """A row's windowed estimate and its 95% interval, with outcome-level (clustered) variance."""
    wu, wn = row[F.WU], row[F.WN]
    if wu <= 0 or wn <= 0:
        return None
    r = row[F.WE] / wu
    resid = max(row[F.WE2] - 2 * r * row[F.WEU] + r * r * row[F.WU2], 0.0)
    se = math.sqrt(row[F.WW] * resid / wn) / wu
    return r, max(r - _Z95 * se, 0.0), r + _Z95 * se


#: detector statistics per row, each ``k`` λ wide: drift, then disparity. Each holds the fire
#: detector while the row is not firing for that kind and the resolve detector while it is (they
#: never run together, and both restart at every transition), so a row keeps 2·k, not 4·k, floats.
DETECTOR_SLOTS = 2


def new_rows(count: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    st = np.zeros((count, NFIELDS), dtype=np.float64)
    st[:, F.BASE] = np.nan
    st[:, F.BANC] = -1.0
    st[:, F.FIRST] = np.nan
    st[:, F.MREF_CLOSED] = np.nan
    det = np.zeros((count, DETECTOR_SLOTS, k), dtype=np.float64)
    return st, det


def merge_detector_slots(st: np.ndarray, det: np.ndarray) -> np.ndarray:
    """Detector statistics written with four slots (fire and resolve apart: checkpoints from
    before they shared one) in today's two: each kind keeps the slot its row's state runs."""
    if det.shape[1] == DETECTOR_SLOTS:
        return det
    drift = np.where((st[:, F.DSTATE] > 0)[:, None], det[:, 1], det[:, 0])
    disparity = np.where((st[:, F.PSTATE] > 0)[:, None], det[:, 3], det[:, 2])
    return np.stack([drift, disparity], axis=1)


def row_digests(st: np.ndarray, det: np.ndarray, block: int) -> list[bytes]:
    """A digest of each block of ``block`` rows (state and detectors): an incremental
    checkpoint writes the blocks whose digest changed."""
    out = []
    for lo in range(0, st.shape[0], block):
        digest = hashlib.blake2b(st[lo:lo + block].data, digest_size=16)
        digest.update(det[lo:lo + block].data)
        out.append(digest.digest())
    return out
