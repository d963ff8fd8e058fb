"""`python -m mtl_ray.cli COMMAND ...`: how `mtl-ray submit` runs a command as a Ray job."""

import sys

from mtl_ray.cli.app import main

sys.exit(main())
