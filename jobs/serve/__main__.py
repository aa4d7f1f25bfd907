"""`python -m pai_distil_jobs.serve CHECKPOINT`: the OpenAI-compatible server of the serving images."""

import sys

from .server import main

sys.exit(main())
