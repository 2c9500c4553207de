"""Fail safe: accelerated components check themselves against the verified path.

No accelerated component may turn a working scan into failed films. Each one (``COMPONENTS``)
runs through ``FailSafe.run``: on its first use in a scan it computes the first batch both
ways (accelerated and verified), compares them with the component's tolerance, and

- when they agree, the component is *verified* for the rest of the scan and its own result
  is used (later batches run the accelerated path only);
- when it raises or they disagree, it is switched *off* for the rest of the scan, with one
  warning naming the component and why, and the verified result is used (this batch and every
  later one). A verified component that raises later is switched off the same way, and that
  batch is computed again on the verified path.

The decoders (NVDEC, DALI) are checked the same way by the scan itself (``pipeline``), which
re-decodes a film with PyAV when an accelerated decoder fails it.

A scan opens one ``FailSafe`` (``session``); components find it with ``current()`` (outside a
scan, a process-wide one). Which path each film actually ran is collected per film with
``film_paths()`` (a thread-local record of the film being scanned in the calling thread) and
written to the manifest by the scan.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Literal, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# Accelerated component -> (what it is, its verified path). The only source of names.
COMPONENTS: dict[str, tuple[str, str]] = {
    "nvdec": ("NVDEC decoding through PyNvVideoCodec", "PyAV decoding"),
    "dali": ("DALI video decoding", "PyAV decoding"),
    "kernels": ("the CUDA roi_resample kernel library", "the torch roi_resample"),
    "cuda-graphs": ("the torch engine on CUDA (fp16, channels_last, CUDA graphs)", "the plain torch model"),
    "onnxruntime-cuda": ("onnxruntime's CUDA execution provider", "the plain torch model"),
    "tensorrt": ("the TensorRT engine", "the plain torch model"),
    "transnet-cuda": ("TransNetV2 on CUDA (scan --shots transnet)", "TransNetV2 on the CPU"),
    "identity-cuda": ("the dlib face encoder on CUDA (scan --characters)", "the dlib face encoder on the CPU"),
}

Status = Literal["unchecked", "verified", "off"]


class Mismatch(Exception):
    """An accelerated result differs from the verified one by more than the tolerance."""


@dataclass
class ComponentState:
    """Where one component stands in a scan."""

    # A COMPONENTS name.
    name: str
    # "unchecked" (not used yet), "verified" (its first batch matched) or "off".
    status: Status = "unchecked"
    # Why it was switched off ("" otherwise).
    reason: str = ""
    # The parity figure of its first batch (largest difference found; None before a check).
    figure: float | None = None


def _check_name(name: str) -> None:
    if name not in COMPONENTS:
        raise ValueError(f"unknown accelerated component {name!r}; expected one of {sorted(COMPONENTS)}")


class _FilmRecord(threading.local):
    paths: dict[str, str] | None = None


_film = _FilmRecord()


class FailSafe:
    """The state of every accelerated component in one scan (thread safe)."""

    def __init__(self) -> None:
        self._states: dict[str, ComponentState] = {}
        self._lock = threading.Lock()
        self._checking: dict[str, threading.Lock] = {name: threading.Lock() for name in COMPONENTS}

    def state(self, name: str) -> ComponentState:
        """The component's state (a copy)."""
        _check_name(name)
        with self._lock:
            st = self._states.get(name) or ComponentState(name)
            return ComponentState(**asdict(st))

    def status(self, name: str) -> Status:
        return self.state(name).status

    def verified(self, name: str, figure: float | None = None) -> None:
        """Mark ``name`` verified (its first batch matched; ``figure``: the largest difference)."""
        _check_name(name)
        with self._lock:
            st = self._states.setdefault(name, ComponentState(name))
            if st.status == "unchecked":
                st.status, st.figure = "verified", figure

    def switch_off(self, name: str, reason: str, figure: float | None = None) -> None:
        """Switch ``name`` off for the rest of the scan; warns once (the first time)."""
        _check_name(name)
        with self._lock:
            st = self._states.setdefault(name, ComponentState(name))
            if st.status == "off":
                return
            st.status, st.reason = "off", reason
            if figure is not None:
                st.figure = figure
        what, fallback = COMPONENTS[name]
        log.warning("%s (%s) switched off for the rest of the scan: %s; using %s instead",
                    name, what, reason, fallback)

    def note(self, name: str, used: bool) -> None:
        """Record in the calling thread's film record that ``name`` ran (``used``) or that its
        verified path ran in its place."""
        paths = _film.paths
        if paths is None:
            return
        if not used:
            paths[name] = f"off: {self.state(name).reason or 'switched off'}"
        else:
            paths.setdefault(name, "used")

    def run(self, name: str, fast: Callable[[], T], verified: Callable[[], T],
            compare: Callable[[T, T], float], tolerance: float) -> T:
        """The result of component ``name``: ``fast()`` (accelerated) once verified, else
        ``verified()``. ``compare(fast_result, verified_result)`` gives their largest
        difference, which must be <= ``tolerance`` on the first batch (see the module)."""
        st = self.status(name)
        if st == "unchecked":
            with self._checking[name]:  # one thread checks; the others wait for its verdict
                if self.status(name) == "unchecked":
                    return self._check(name, fast, verified, compare, tolerance)
            st = self.status(name)
        if st == "off":
            self.note(name, False)
            return verified()
        try:
            out = fast()
        except Exception as e:  # a verified component failing later: off, and this batch again
            log.debug("%s failed after its check", name, exc_info=True)
            self.switch_off(name, f"{type(e).__name__}: {e}")
            self.note(name, False)
            return verified()
        self.note(name, True)
        return out

    def _check(self, name: str, fast: Callable[[], T], verified: Callable[[], T],
               compare: Callable[[T, T], float], tolerance: float) -> T:
        try:
            got = fast()
        except Exception as e:
            log.debug("%s failed on its first batch", name, exc_info=True)
            self.switch_off(name, f"{type(e).__name__} on its first batch: {e}")
            self.note(name, False)
            return verified()
        want = verified()
        try:
            diff = float(compare(got, want))
        except Exception as e:  # wrong shape, dtype, device...
            self.switch_off(name, f"its first batch cannot be compared with {COMPONENTS[name][1]}: {e}")
            self.note(name, False)
            return want
        if not diff <= tolerance:  # also catches NaN
            self.switch_off(name, f"its first batch differs from {COMPONENTS[name][1]} by {diff:.4g} "
                            f"(tolerance {tolerance:.4g})", figure=diff)
            self.note(name, False)
            return want
        self.verified(name, diff)
        self.note(name, True)
        return got

    def report(self) -> dict[str, dict[str, Any]]:
        """Every component used so far -> {"status", "reason", "figure"} (for the manifest)."""
        with self._lock:
            return {n: {k: v for k, v in asdict(s).items() if k != "name"} for n, s in sorted(self._states.items())}


_default = FailSafe()
_current: FailSafe | None = None
_current_lock = threading.Lock()


def current() -> FailSafe:
    """The FailSafe of the running scan, or the process-wide one outside a scan."""
    return _current or _default


@contextlib.contextmanager
def session() -> Iterator[FailSafe]:
    """A fresh FailSafe for one scan (every component unchecked again), current while it runs."""
    global _current
    fs = FailSafe()
    with _current_lock:
        before, _current = _current, fs
    try:
        yield fs
    finally:
        with _current_lock:
            _current = before


@contextlib.contextmanager
def film_paths() -> Iterator[dict[str, str]]:
    """Collect, in the calling thread, which accelerated components the film ran
    (component -> "used", or "off: reason" when its verified path ran instead)."""
    before = _film.paths
    _film.paths = paths = {}
    try:
        yield paths
    finally:
        _film.paths = before


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference of two tensors of the same shape (compared on ``b``'s device
    in float32); a shape mismatch raises ValueError."""
    import torch

    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shape {tuple(a.shape)} instead of {tuple(b.shape)}")
    if a.numel() == 0:
        return 0.0
    return float((a.detach().to(b.device, torch.float32) - b.detach().to(torch.float32)).abs().max())
