"""``python -m hermes_api`` is the ``hermes-api`` command."""

import sys

from .cli import main

sys.exit(main())
