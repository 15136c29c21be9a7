"""``python -m tap_wellsky.airbyte``: the same as the ``source-wellsky`` command."""

from .commands import main

main()
