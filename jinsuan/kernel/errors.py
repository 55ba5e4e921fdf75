"""Domain errors. They know nothing of HTTP; jinsuan.app maps each to a status code."""

from __future__ import annotations


class JinsuanError(Exception):
    code = "error"

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class Invalid(JinsuanError):
    """The request is well-formed but a value in it is not acceptable (422)."""

    code = "invalid"


class Unauthenticated(JinsuanError):
    """No credentials, or credentials that do not verify (401)."""

    code = "unauthenticated"


class Forbidden(JinsuanError):
    """Authenticated, but this role or owner may not do this (403)."""

    code = "forbidden"


class NotFound(JinsuanError):
    code = "not_found"


class Conflict(JinsuanError):
    code = "conflict"


class SeqConflict(Conflict):
    """A report under a seq the platform already holds with another body (409): never stored
    over the first, never acknowledged; ``next_seq`` is where the agent's numbers may resume."""

    code = "seq_conflict"

    def __init__(self, reason: str, *, next_seq: int) -> None:
        super().__init__(reason, field="seq")
        self.next_seq = next_seq


class TooLarge(JinsuanError):
    code = "too_large"


class Unavailable(JinsuanError):
    """The platform cannot serve this now; the caller should retry after a moment (503)."""

    code = "unavailable"

    def __init__(self, reason: str, *, retry_after_s: int = 1) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s
