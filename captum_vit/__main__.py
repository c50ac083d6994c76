"""``python -m captum_vit`` runs the ``captum-vit`` command."""

import sys

from .cli import main

sys.exit(main())
