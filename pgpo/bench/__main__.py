"""``python -m pgpo.bench`` is ``pgpo bench``."""

import sys

from pgpo.commands.bench import main

sys.exit(main(sys.argv[1:]))
