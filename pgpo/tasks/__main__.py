"""``python -m pgpo.tasks`` is ``pgpo tasks``."""

import sys

from pgpo.commands.tasks import main

sys.exit(main(sys.argv[1:]))
