"""The forwarding decision of one subscriber copy, as pure state (LiveKit's ``Forwarder``).

A ``DownTrack`` asks its ``Forwarder`` what to do with each packet of its source
(``decide``), then applies the answer itself (rewrites and sends, starts a new segment, asks
for a keyframe) and tells the forwarder what it did (``switched``). The rules:

- the stream being forwarded goes on (its padding closes the sequence gap: ``SKIP``);
- another stream is taken only if it is the target layer, at a keyframe (``SWITCH``); a
  delta frame of the target asks for a keyframe (``REQUEST_KEYFRAME``) and is dropped;
- nothing is forwarded before the sender is negotiated (``ready``) or while paused; resuming
  waits for a keyframe of the target.

``KeyframeThrottle`` limits keyframe requests per layer, on an injected clock.
No aiortc, no I/O: ``tests/sfu/test_forwarder.py`` drives it directly.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

__all__ = ["Decision", "Forwarder", "KeyframeThrottle"]


class Decision(enum.IntEnum):
    DROP = 0
    FORWARD = 1  # rewrite and send on the current segment
    SWITCH = 2  # start a new segment on this packet's stream, then forward it
    SKIP = 3  # padding of the current stream: close the sequence gap, send nothing
    REQUEST_KEYFRAME = 4  # drop, and ask the source for a keyframe of the packet's layer


_DROP = Decision.DROP
_FORWARD = Decision.FORWARD
_SWITCH = Decision.SWITCH
_SKIP = Decision.SKIP
_REQUEST_KEYFRAME = Decision.REQUEST_KEYFRAME


class Forwarder:
    """Forwarding state of one subscriber copy: which stream it forwards, which layer it
    wants to forward, whether it may forward at all."""

    __slots__ = ("current", "last_ssrc", "paused", "ready", "ssrc", "switches", "target")

    def __init__(self) -> None:
        self.ssrc: int | None = None  # the stream being forwarded (None: waiting for one)
        self.last_ssrc: int | None = None  # the stream forwarded last (kept across pauses)
        self.current = -1  # its layer
        self.target = 0  # the layer to forward
        self.ready = False  # the sender is negotiated
        self.paused = False
        self.switches = 0

    @property
    def current_layer(self) -> int:
        """The layer being forwarded, -1 if none."""
        return self.current if self.ssrc is not None else -1

    def decide(self, layer: int, ssrc: int, keyframe: bool, padding: bool = False) -> Decision:
        """What to do with a packet of stream ``ssrc`` on ``layer``. Changes nothing."""
        if ssrc == self.ssrc:
            return _SKIP if padding else _FORWARD
        if padding or not self.ready or self.paused or layer != self.target:
            return _DROP
        if not keyframe:
            return _REQUEST_KEYFRAME
        return _SWITCH

    def switched(self, layer: int, ssrc: int) -> None:
        """A new segment started on ``ssrc`` (after ``SWITCH``)."""
        if self.ssrc is not None or self.last_ssrc is not None:
            self.switches += 1
        self.ssrc = ssrc
        self.last_ssrc = ssrc
        self.current = layer

    def retarget(self, target: int) -> bool:
        """Set the layer to forward; True if a keyframe of it should be requested now (it is
        not the layer being forwarded, or nothing is, and the sender is ready)."""
        if target == self.target and self.ssrc is not None:
            return False
        self.target = target
        return self.ready and (target != self.current or self.ssrc is None)

    def start(self) -> bool:
        """The sender is negotiated; True if a keyframe of the target should be requested."""
        self.ready = True
        return not self.paused

    def pause(self) -> None:
        """Forward nothing; the next resume starts at a keyframe."""
        self.paused = True
        self.ssrc = None

    def resume(self) -> None:
        self.paused = False

    def reset(self) -> None:
        """A new source (the sender stays negotiated)."""
        self.ssrc = None
        self.last_ssrc = None
        self.current = -1
        self.target = 0
        self.paused = False


class KeyframeThrottle:
    """At most one keyframe request per ``interval`` seconds per layer (a PLI makes the
    publisher send a large picture: many subscribers asking at once must cost one)."""

    __slots__ = ("_clock", "_last", "interval")

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[int, float] = {}

    def allow(self, layer: int) -> bool:
        """True (and the interval starts again) if a request for ``layer`` may go now."""
        now = self._clock()
        last = self._last.get(layer)
        if last is not None and now - last < self.interval:
            return False
        self._last[layer] = now
        return True
