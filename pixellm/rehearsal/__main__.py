"""`python -m pixellm.rehearsal` (`make rehearsal`): see run.py."""

import sys

from .run import main

sys.exit(main())
