"""`python -m anomaly_edge` is the same as `anomaly-edge`."""

import sys

from anomaly_edge.cli.main import main

sys.exit(main())
