"""``python -m dime_nas.agent ...``: the same as ``dime-nas agent ...``, without loading the toolkit's CLI."""
from __future__ import annotations

import sys

from .server import main

sys.exit(main())
