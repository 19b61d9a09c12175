"""``python -m autodeeplab`` runs the CLI."""

import sys

from autodeeplab.cli.main import main

sys.exit(main())
