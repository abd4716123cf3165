"""``python -m dime_nas.agent ...``: the same as ``dime-nas agent ...``."""
from __future__ import annotations

import sys

from dime_nas.cli import main

sys.exit(main(["agent", *sys.argv[1:]]))
