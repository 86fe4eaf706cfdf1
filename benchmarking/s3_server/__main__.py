"""``python -m benchmarking.s3_server``: see :func:`benchmarking.s3_server.process.main`."""

import sys

from .process import main

sys.exit(main())
