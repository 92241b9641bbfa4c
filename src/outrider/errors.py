"""outrider's error tree, and the one place that turns an error into an HTTP status and a JSON body.

Catch `OutriderError` for everything outrider raises on purpose; subclasses say which HTTP status a client gets.
A message is written for the caller: it names the field and the problem and never carries a credential.
"""

from __future__ import annotations

from typing import Any, Self


class OutriderError(Exception):
    """Base of every error outrider raises on purpose."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, Any]:
        return error_body(self.type, self.message, self.field)

    def clone(self) -> Self:
        """The same error as a new object with no traceback, for handing one outcome to several waiting tasks:
        raising one exception object in two tasks would splice their tracebacks together."""
        twin = type(self).__new__(type(self), *self.args)
        twin.__dict__.update(self.__dict__)
        return twin


class InvalidRequest(OutriderError):
    """The request is malformed: a missing or wrong field, a bad value."""

    status = 400
    type = "invalid_request"


class PathOutsideRoot(InvalidRequest):
    """A path a request names would lead outside the root it must stay under (`..`, elsewhere, a symlink out)."""

    status = 403
    type = "path_outside_root"


class NotFound(OutriderError):
    status = 404
    type = "not_found"


class Conflict(OutriderError):
    status = 409
    type = "conflict"


class Unsupported(Conflict):
    """What was asked cannot be done for this engine as it runs (no sleep routes, no kvcached segment, ...)."""

    type = "unsupported"


class NotConfigured(OutriderError):
    """A feature the operator has not turned on (the engine lifecycle without --engine-launch)."""

    status = 501
    type = "not_configured"


class EngineFailed(OutriderError):
    """An engine outrider launched could not be started, or stopped before it served (its exit is in the message)."""

    status = 500
    type = "engine_failed"


class InsufficientStorage(OutriderError):
    """The destination's file system has less free space than the download needs."""

    status = 507
    type = "insufficient_storage"


class EngineUnavailable(OutriderError):
    """The engine could not be reached or did not answer in time."""

    status = 503
    type = "engine_unavailable"


def error_body(type_: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The JSON body of every error answer: `{"error": {"type", "message", "field"?}}`."""
    error: dict[str, Any] = {"type": type_, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


class SourceError(OutriderError):
    """A store or volume refused or failed a listing or a read."""

    status = 502
    type = "source_error"


class InvalidSource(SourceError, InvalidRequest):
    """The source URI or its options are malformed (unknown scheme, missing bucket, bad revision...)."""

    status = 400
    type = "invalid_source"


class SourceNotFound(SourceError):
    status = 404
    type = "source_not_found"


class SourceAccessDenied(SourceError):
    """Wrong or missing credentials, or a path outside what this pod may read."""

    status = 403
    type = "source_access_denied"


class SourceTransientError(SourceError):
    """A failure a retry may fix: reset connection, 5xx, timeout, throttling."""

    status = 503
    type = "source_unavailable"


class SourceThrottled(SourceTransientError):
    """The store asked us to slow down (503 SlowDown, 429): `retry_after` is the wait it named (Retry-After), in
    seconds, or None where it named none."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineRefused(OutriderError):
    """The engine answered a LoRA admin call with an error; the status and message are the engine's own.

    `reason` is what outrider needs to decide what to do next: `already_loaded` (the name is taken),
    `unknown_adapter` (unload of a name the engine does not have), `lora_disabled` (the engine has no runtime
    LoRA API), or `rejected` (anything else: bad path, rank too large, ...).
    """

    type = "engine_refused"

    def __init__(self, message: str, *, status: int, reason: str) -> None:
        super().__init__(message)
        # An engine 5xx is the engine's fault, not the caller's: relay it as a bad gateway.
        self.status = status if 400 <= status < 500 else 502
        self.reason = reason


class VerificationFailed(SourceError):
    """What arrived is not what the store listed (size or checksum differs); nothing was published."""

    status = 502
    type = "verification_failed"
