"""The compiled kernel (:mod:`monitor.kernel`), loaded in a background thread.

Importing numba and loading the kernel from its on-disk cache takes most of a second. The
engine starts loading it when it is created (:func:`preload`) and meanwhile decodes, joins,
scores and routes the first events; the first batch of outcomes waits for it
(:func:`kernel`). Numba's numpy support imports ``scipy.linalg`` on first load to probe for
BLAS (a third of that time, for ``np.dot`` and linear algebra, which the kernel never uses);
the probe is answered "absent" while the kernel loads, unless scipy.linalg is already there.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType

_lock = threading.Lock()
_thread: threading.Thread | None = None
_module: ModuleType | None = None
_error: BaseException | None = None
_PROBED = "scipy.linalg"


def _load() -> None:
    global _module, _error
    hide = _PROBED not in sys.modules
    if hide:
        sys.modules[_PROBED] = None  # type: ignore[assignment]  # import → ImportError: numba takes "no BLAS"
    try:
        from monitor import kernel

        kernel.warm()
        _module = kernel
    except BaseException as exc:  # re-raised in the caller's thread by kernel()
        _error = exc
    finally:
        if hide and _PROBED in sys.modules and sys.modules[_PROBED] is None:
            del sys.modules[_PROBED]


def preload() -> None:
    """Start loading the kernel (once per process)."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_load, name="lastmile-kernel-load", daemon=True)
            _thread.start()


def kernel() -> ModuleType:
    """The loaded :mod:`monitor.kernel` (waits for the load; raises what it raised)."""
    if _module is None:
        preload()
        assert _thread is not None
        _thread.join()
        if _error is not None:
            raise _error
    assert _module is not None
    return _module
