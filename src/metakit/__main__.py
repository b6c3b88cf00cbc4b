"""``python -m metakit``: the same as the ``metakit`` command."""

import sys

from metakit.cli.main import main

sys.exit(main())
