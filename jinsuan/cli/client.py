"""What the command line's sub-commands share: the console, how a failure is told, and calls to
the platform's REST API with the caller's key (``--key`` or ``JINSUAN_API_KEY``, the platform
from ``--url`` or ``JINSUAN_URL``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    import httpx

# Soft wrap: a path or id in a message is never broken across lines. No markup: what the
# platform or a config says (names, reasons, errors) is shown as it is, where markup lost the
# key in "the agent's [executor] kind" and ended the command at a "[/x]"; styles are Text's.
console = Console(soft_wrap=True, markup=False)

Url = Annotated[str, typer.Option("--url", envvar="JINSUAN_URL", help="The platform's URL.")]
Key = Annotated[str, typer.Option("--key", envvar="JINSUAN_API_KEY", help="Your API key.")]


def fail(message: str) -> typer.Exit:
    console.print(Text.assemble(("error:", "red"), f" {message}"))
    return typer.Exit(code=2)


def call(method: str, url: str, key: str, path: str, **kwargs: Any) -> Any:
    """The JSON answer of ``method path``; an error answer ends the command with its reason."""
    return _answer(method, url, key, path, **kwargs).json()


def call_bytes(method: str, url: str, key: str, path: str, **kwargs: Any) -> bytes:
    """The answer of ``method path`` as it came (a CSV, XLSX or PDF file); an error answer ends
    the command with its reason, as :func:`call` does."""
    return _answer(method, url, key, path, **kwargs).content


def _answer(method: str, url: str, key: str, path: str, **kwargs: Any) -> httpx.Response:
    import httpx  # here, not at the top: `jinsuan agent run` should not load it via this module

    try:
        with httpx.Client(base_url=url, timeout=120,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            reply = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach the platform at {url}: {exc}") from None
    if reply.status_code >= 400:
        try:
            error = reply.json()["error"]
            where = f" ({error['field']})" if error.get("field") else ""
            message = f"{error['reason']}{where}"
        except (ValueError, KeyError, TypeError):
            message = reply.text[:500]
        raise fail(f"{reply.status_code}: {message}")
    return reply
