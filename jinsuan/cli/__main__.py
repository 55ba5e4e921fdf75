"""``python -m jinsuan.cli``: the same as the ``jinsuan`` command."""

from jinsuan.cli import main

main()
