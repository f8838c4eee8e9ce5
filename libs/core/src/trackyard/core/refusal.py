"""One refusal type for every "no" the server says, and one table of what each code becomes.

A :class:`Refusal` carries a :class:`Code` (Twirp's vocabulary, which LiveKit's psrpc errors
also map onto) and a plain reason. Wherever it surfaces, the answer is derived from ``_TABLE``:
the HTTP status of a refused ``/rtc`` upgrade, ``/rtc/validate`` or router call (Twirp's own
status mapping, the one LiveKit's ``rtcservice.go`` and ``roomservice.go`` answer with), the
``{"code", "msg"}`` of a Twirp error, and the WebSocket close code when the edge closes an open
signal socket. Refusals cross the bus as the code's value (node RPC errors, session closes).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Code(enum.StrEnum):
    """Why a request is refused; the value is the Twirp error code."""

    CANCELED = "canceled"
    UNKNOWN = "unknown"
    INVALID_ARGUMENT = "invalid_argument"
    MALFORMED = "malformed"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_FOUND = "not_found"
    BAD_ROUTE = "bad_route"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    UNAUTHENTICATED = "unauthenticated"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    OUT_OF_RANGE = "out_of_range"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    DATALOSS = "dataloss"

    @classmethod
    def parse(cls, value: str) -> Code:
        """A code received from elsewhere (bus, router); one we do not know is ``unknown``."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


class CloseReason(enum.IntEnum):
    """Why the edge closes a client's open signal socket; the value is the RFC 6455 close code.

    LiveKit closes every socket with 1000 and no reason. The browser SDK (``SignalClient``)
    takes any other code on a connected socket as a lost connection and resumes, 1000 as a
    deliberate end; the reason text is for whoever reads the close (a developer, a log).
    """

    ENDED = 1000  # session over: removed or left (a leave was sent), ping timeout, rejoin asked
    GOING_AWAY = 1001  # the edge is draining (agent worker sockets)
    UNSUPPORTED_FRAME = 1003  # a frame kind this server does not speak (text/JSON)
    MALFORMED_FRAME = 1007  # a binary frame that is no SignalRequest
    REFUSED = 1008  # a rule refused the request (credentials, permission, state)
    FRAME_TOO_BIG = 1009  # over signal.max_message_size
    SERVER_ERROR = 1011  # the server cannot carry the session now (bus away, a failure)


@dataclass(frozen=True)
class Status:
    http: int
    close: CloseReason


# The one status table. HTTP: Twirp's ServerHTTPStatusFromErrorCode (twitchtv/twirp errors.go).
_TABLE: dict[Code, Status] = {
    Code.CANCELED: Status(408, CloseReason.SERVER_ERROR),
    Code.UNKNOWN: Status(500, CloseReason.SERVER_ERROR),
    Code.INVALID_ARGUMENT: Status(400, CloseReason.MALFORMED_FRAME),
    Code.MALFORMED: Status(400, CloseReason.MALFORMED_FRAME),
    Code.DEADLINE_EXCEEDED: Status(408, CloseReason.SERVER_ERROR),
    Code.NOT_FOUND: Status(404, CloseReason.REFUSED),
    Code.BAD_ROUTE: Status(404, CloseReason.UNSUPPORTED_FRAME),
    Code.ALREADY_EXISTS: Status(409, CloseReason.REFUSED),
    Code.PERMISSION_DENIED: Status(403, CloseReason.REFUSED),
    Code.UNAUTHENTICATED: Status(401, CloseReason.REFUSED),
    Code.RESOURCE_EXHAUSTED: Status(429, CloseReason.FRAME_TOO_BIG),
    Code.FAILED_PRECONDITION: Status(412, CloseReason.REFUSED),
    Code.ABORTED: Status(409, CloseReason.SERVER_ERROR),
    Code.OUT_OF_RANGE: Status(400, CloseReason.MALFORMED_FRAME),
    Code.UNIMPLEMENTED: Status(501, CloseReason.UNSUPPORTED_FRAME),
    Code.INTERNAL: Status(500, CloseReason.SERVER_ERROR),
    Code.UNAVAILABLE: Status(503, CloseReason.SERVER_ERROR),
    Code.DATALOSS: Status(500, CloseReason.SERVER_ERROR),
}


def status(code: Code) -> Status:
    return _TABLE[code]


class Refusal(Exception):
    """The server refuses: ``code`` says how (see :class:`Code`), ``reason`` says why, in
    words meant for the caller."""

    def __init__(self, code: Code, reason: str) -> None:
        self.code = Code(code)  # a plain code string from an untyped caller becomes the member
        self.reason = reason
        super().__init__(f"{self.code.value}: {reason}")

    @property
    def status(self) -> int:
        """The HTTP status to answer with."""
        return _TABLE[self.code].http

    @property
    def twirp_code(self) -> str:
        return self.code.value

    @property
    def close_reason(self) -> CloseReason:
        """How the edge closes an open signal socket over this refusal."""
        return _TABLE[self.code].close
