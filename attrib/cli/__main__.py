"""``python -m attrib.cli``: the same as the ``attrib`` command."""

import sys

from attrib.cli import main

sys.exit(main())
