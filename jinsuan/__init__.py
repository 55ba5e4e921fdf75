"""jinsuan (晋算): the shared base of the platform and its agents.

Kept import-light: an agent install (no server extra) imports ``jinsuan.wire``,
``jinsuan.signing``, ``jinsuan.metrics`` and ``jinsuan.accelerators`` only.
"""

__version__ = "0.1.0"
