"""``python -m pgpo <command>`` is ``pgpo <command>``: the one way in besides the ``pgpo`` script."""

import sys

from pgpo.cli import main

sys.exit(main())
