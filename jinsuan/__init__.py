"""jinsuan (晋算): the site contract, the server kernel, and what assembles the rooms.

Four layers, each importing only those below it (``pyproject.toml``'s import-linter contracts):

- the composition root: ``jinsuan.app`` (the app factory), ``jinsuan.serve``, ``jinsuan.cli``
  and ``jinsuan.demo``;
- the rooms: ``agents``, ``collectors``, ``scheduler``, ``dashboards``, independent of each other;
- the server kernel, ``jinsuan.kernel``: settings, the store, keys, sites, FastAPI dependencies;
- the site contract, ``jinsuan.contract``: what an agent and the platform share.

Kept import-light: an agent install (no server extra) imports this package and
``jinsuan.contract`` only.
"""

__version__ = "0.1.0"
