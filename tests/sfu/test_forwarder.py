"""The forwarding decision (``trackyard.sfu.forwarder``) on its own: no aiortc, no sockets."""

from __future__ import annotations

from trackyard.sfu.forwarder import Decision, Forwarder, KeyframeThrottle

LOW, MID, HIGH = 0, 1, 2
SSRC = {LOW: 1111, MID: 2222, HIGH: 3333}


def _ready(target: int = LOW) -> Forwarder:
    fwd = Forwarder()
    fwd.retarget(target)
    assert fwd.start()  # not paused: the caller asks for a keyframe
    return fwd


def _apply(fwd: Forwarder, layer: int, keyframe: bool, padding: bool = False) -> Decision:
    """Decide, then apply as a DownTrack does (the switch is committed by the caller)."""
    decision = fwd.decide(layer, SSRC[layer], keyframe, padding)
    if decision == Decision.SWITCH:
        fwd.switched(layer, SSRC[layer])
    return decision


def test_nothing_before_the_sender_is_ready() -> None:
    fwd = Forwarder()
    assert fwd.decide(LOW, SSRC[LOW], keyframe=True) == Decision.DROP
    assert fwd.current_layer == -1
    assert fwd.start()
    assert fwd.decide(LOW, SSRC[LOW], keyframe=True) == Decision.SWITCH


def test_starts_only_at_a_keyframe_of_the_target() -> None:
    fwd = _ready(MID)
    assert _apply(fwd, LOW, keyframe=True) == Decision.DROP  # not the target
    assert _apply(fwd, MID, keyframe=False) == Decision.REQUEST_KEYFRAME
    assert fwd.current_layer == -1
    assert _apply(fwd, MID, keyframe=True) == Decision.SWITCH
    assert fwd.current_layer == MID
    assert _apply(fwd, MID, keyframe=False) == Decision.FORWARD
    assert fwd.switches == 0  # the first segment is no switch


def test_layer_switch_only_at_a_keyframe_and_the_old_layer_runs_until_then() -> None:
    fwd = _ready(HIGH)
    _apply(fwd, HIGH, keyframe=True)
    assert fwd.retarget(LOW)  # a keyframe of the new target is wanted now
    assert fwd.target == LOW and fwd.current_layer == HIGH
    # until LOW's keyframe: HIGH goes on, LOW's delta frames ask for a keyframe
    assert _apply(fwd, HIGH, keyframe=False) == Decision.FORWARD
    assert _apply(fwd, LOW, keyframe=False) == Decision.REQUEST_KEYFRAME
    assert _apply(fwd, MID, keyframe=True) == Decision.DROP
    assert _apply(fwd, LOW, keyframe=True) == Decision.SWITCH
    assert fwd.current_layer == LOW and fwd.switches == 1
    # the old layer is dropped from now on, even at its keyframes
    assert _apply(fwd, HIGH, keyframe=True) == Decision.DROP
    assert _apply(fwd, LOW, keyframe=False) == Decision.FORWARD


def test_target_change_mid_stream_back_to_the_current_layer_asks_nothing() -> None:
    fwd = _ready(MID)
    _apply(fwd, MID, keyframe=True)
    assert not fwd.retarget(MID)  # unchanged
    assert fwd.retarget(HIGH)
    # changed its mind before HIGH's keyframe came: MID is being forwarded, no keyframe needed
    assert not fwd.retarget(MID)
    assert _apply(fwd, HIGH, keyframe=True) == Decision.DROP
    assert _apply(fwd, MID, keyframe=False) == Decision.FORWARD
    assert fwd.switches == 0


def test_retarget_before_ready_asks_no_keyframe_and_start_does() -> None:
    fwd = Forwarder()
    assert not fwd.retarget(HIGH)  # the sender is not negotiated: nothing to ask for yet
    assert fwd.start()
    assert fwd.decide(HIGH, SSRC[HIGH], keyframe=True) == Decision.SWITCH


def test_pause_drops_everything_and_resume_waits_for_a_keyframe() -> None:
    fwd = _ready(LOW)
    _apply(fwd, LOW, keyframe=True)
    fwd.pause()
    assert fwd.current_layer == -1
    assert _apply(fwd, LOW, keyframe=True) == Decision.DROP
    assert _apply(fwd, LOW, keyframe=False) == Decision.DROP  # no keyframe asked while paused
    assert _apply(fwd, LOW, keyframe=False, padding=True) == Decision.DROP
    fwd.resume()
    assert fwd.retarget(LOW)  # same layer, but nothing is forwarded: ask for a keyframe
    assert _apply(fwd, LOW, keyframe=False) == Decision.REQUEST_KEYFRAME
    assert _apply(fwd, LOW, keyframe=True) == Decision.SWITCH
    assert fwd.switches == 1  # resuming starts a new segment (same stream: its own timeline)
    assert fwd.last_ssrc == SSRC[LOW]


def test_paused_before_start_asks_no_keyframe_at_start() -> None:
    fwd = Forwarder()
    fwd.pause()
    assert not fwd.start()
    assert fwd.decide(LOW, SSRC[LOW], keyframe=True) == Decision.DROP


def test_padding_closes_the_gap_only_on_the_stream_being_forwarded() -> None:
    fwd = _ready(MID)
    assert _apply(fwd, MID, keyframe=False, padding=True) == Decision.DROP  # not started
    _apply(fwd, MID, keyframe=True)
    assert _apply(fwd, MID, keyframe=False, padding=True) == Decision.SKIP
    assert _apply(fwd, LOW, keyframe=False, padding=True) == Decision.DROP
    fwd.retarget(LOW)
    # padding never starts a segment, even on the target
    assert _apply(fwd, LOW, keyframe=True, padding=True) == Decision.DROP
    assert fwd.current_layer == MID


def test_reset_for_a_new_source_keeps_the_sender() -> None:
    fwd = _ready(HIGH)
    _apply(fwd, HIGH, keyframe=True)
    fwd.pause()
    fwd.reset()
    assert fwd.ready and not fwd.paused
    assert fwd.current_layer == -1 and fwd.last_ssrc is None and fwd.target == LOW
    assert fwd.decide(LOW, 9999, keyframe=True) == Decision.SWITCH


def test_decide_changes_nothing() -> None:
    fwd = _ready(LOW)
    before = (fwd.ssrc, fwd.last_ssrc, fwd.current, fwd.target, fwd.switches)
    for layer in (LOW, MID, HIGH):
        for keyframe in (False, True):
            fwd.decide(layer, SSRC[layer], keyframe)
    assert (fwd.ssrc, fwd.last_ssrc, fwd.current, fwd.target, fwd.switches) == before


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_keyframe_requests_are_throttled_per_layer() -> None:
    clock = FakeClock()
    throttle = KeyframeThrottle(0.5, clock)
    assert throttle.allow(LOW)
    assert not throttle.allow(LOW)  # many subscribers asking at once cost one request
    assert throttle.allow(HIGH)  # another layer has its own interval
    clock.now += 0.49
    assert not throttle.allow(LOW)
    clock.now += 0.02
    assert throttle.allow(LOW)
    assert not throttle.allow(LOW)
    assert throttle.allow(HIGH)  # 0.51 s after its first


def test_keyframe_throttle_refusals_do_not_extend_the_interval() -> None:
    clock = FakeClock()
    throttle = KeyframeThrottle(1.0, clock)
    assert throttle.allow(MID)
    for _ in range(7):  # binary fractions: the sums are exact
        clock.now += 0.125
        assert not throttle.allow(MID)  # refused; must not push the next request later
    clock.now += 0.125
    assert throttle.allow(MID)


def test_zero_interval_never_throttles() -> None:
    throttle = KeyframeThrottle(0.0, FakeClock())
    assert all(throttle.allow(LOW) for _ in range(5))


def test_the_stream_being_forwarded_goes_on_in_every_state() -> None:
    """DownTrack.forward inlines this rule (ssrc == forwarder.ssrc and not padding ->
    FORWARD) and calls decide() only otherwise: decide must agree in every state, and
    never answer FORWARD for another stream."""
    fwd = _ready(MID)
    _apply(fwd, MID, keyframe=True)
    for target in (LOW, MID, HIGH):
        fwd.retarget(target)
        for layer in (LOW, MID, HIGH):
            for keyframe in (False, True):
                expected = Decision.FORWARD if layer == MID else None
                decision = fwd.decide(layer, SSRC[layer], keyframe)
                if expected is not None:
                    assert decision == expected
                else:
                    assert decision != Decision.FORWARD
