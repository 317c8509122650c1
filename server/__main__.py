"""``python -m geosearch_server ...`` is the ``geosearch`` command (what client configs start)."""

import sys

from geosearch_server.cli import main

sys.exit(main())
