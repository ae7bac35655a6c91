"""`python -m sendonce`: the same CLI as the `sendonce` command."""

import sys

from sendonce.cli import main

sys.exit(main())
