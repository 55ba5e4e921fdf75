"""What runs at a site: the agent daemon, its probes, its durable spool and its uploader.

Nothing here imports the platform's server side; the agent talks to the platform only through
``jinsuan.contract.wire`` and HTTP.

``import httpx`` also imports httpx's own command-line client whenever rich, click and pygments
are installed (they are: jinsuan's CLI needs rich and click). The agent never runs that client,
and loading it costs about 4.5 MB of the agent's resident memory (``bench/agent.py``), so the
agent package marks it absent before anything imports httpx; httpx then falls back to a stub
``httpx.main`` and works as before. It has no effect when httpx was imported first.
"""

import sys

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
