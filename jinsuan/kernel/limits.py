"""The size of a request body, limited before any of it is parsed or stored.

Reports (``POST /v1/reports``) have their own, larger limit, enforced while the intake reads
(``JINSUAN_MAX_BODY_BYTES``); every other route takes at most ``JINSUAN_MAX_REQUEST_BYTES``
(1 MiB: a job spec, a price list, a run event). A declared ``Content-Length`` over the limit is
refused at once, before the body is read; a body sent without one (chunked) is counted as it
arrives and refused as soon as it passes the limit. The refusal is the platform's JSON error
with ``413``, and nothing of the body is kept.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNLIMITED_HERE = frozenset({"/v1/reports"})  # the intake enforces its own limit


class BodyLimit:
    """ASGI middleware refusing request bodies over ``limit`` bytes with a 413."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_HERE:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, f"body is {int(declared)} bytes; at most {self.limit}"
                                     " allowed")
            return
        seen = 0
        refused = False

        async def counting_receive() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Answer now, and tell the route the client has gone: whatever it makes of
                    # that (FastAPI: a 400 for a body it could not read) is not sent.
                    refused = True
                    await self._refuse(send, f"body exceeds the {self.limit} bytes allowed")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    @staticmethod
    async def _refuse(send: Send, reason: str) -> None:
        body = json.dumps({"error": {"code": "too_large", "field": "body",
                                     "reason": reason}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
