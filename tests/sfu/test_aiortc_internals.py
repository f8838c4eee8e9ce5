"""The aiortc internals that rtphooks bends must exist; if one disappears, say which."""

from __future__ import annotations

import warnings

import aioice.ice
import aiortc
import pytest
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport, RtpRouter

from trackyard.sfu import rtphooks
from trackyard.sfu.rtphooks import AiortcInternalsError, check_aiortc_internals


def test_installed_aiortc_has_everything_we_hook() -> None:
    assert aiortc.__version__ == rtphooks.EXPECTED_AIORTC_VERSION
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_aiortc_internals()


@pytest.mark.parametrize(
    ("owner", "name", "label"),
    [
        (RTCRtpSender, "_run_rtcp", "RTCRtpSender._run_rtcp"),
        (RTCRtpSender, "_handle_rtcp_packet", "RTCRtpSender._handle_rtcp_packet"),
        (RTCRtpReceiver, "_handle_rtp_packet", "RTCRtpReceiver._handle_rtp_packet"),
        (RTCDtlsTransport, "_send_rtp", "RTCDtlsTransport._send_rtp"),
        (RtpRouter, "route_rtp", "RtpRouter.route_rtp"),
        (aioice.ice.Connection, "get_component_candidates", "get_component_candidates"),
    ],
)
def test_missing_method_is_named(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, label: str
) -> None:
    monkeypatch.delattr(owner, name)
    with pytest.raises(AiortcInternalsError) as info:
        check_aiortc_internals()
    message = str(info.value)
    assert label in message
    assert rtphooks.EXPECTED_AIORTC_VERSION in message


def test_missing_instance_attribute_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """An attribute aiortc sets in __init__ (here the receiver's RTCP SSRC) that a new
    version no longer sets."""

    def new_init(self: RTCRtpReceiver, kind: str, transport: RTCDtlsTransport) -> None:
        self._something_else = kind  # type: ignore[attr-defined]

    monkeypatch.setattr(RTCRtpReceiver, "__init__", new_init)
    with pytest.raises(AiortcInternalsError, match=r"RTCRtpReceiver\.__rtcp_ssrc"):
        check_aiortc_internals()


def test_changed_call_site_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The synchronous send path reads aioice's nominated candidate pairs; a version whose
    sendto no longer uses them is reported."""

    async def sendto(self: aioice.ice.Connection, data: bytes, component: int) -> None:
        return None

    monkeypatch.setattr(aioice.ice.Connection, "sendto", sendto)
    with pytest.raises(AiortcInternalsError, match=r"aioice\.Connection\._nominated"):
        check_aiortc_internals()


def test_all_missing_internals_are_listed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RTCRtpSender, "_run_rtp")
    monkeypatch.delattr(RTCDtlsTransport, "_handle_rtp_data")
    with pytest.raises(AiortcInternalsError) as info:
        check_aiortc_internals()
    assert "RTCRtpSender._run_rtp" in str(info.value)
    assert "RTCDtlsTransport._handle_rtp_data" in str(info.value)


def test_other_version_with_all_internals_only_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiortc, "__version__", "1.99.0")
    with pytest.warns(RuntimeWarning, match=r"aiortc 1\.99\.0 installed"):
        check_aiortc_internals()
