import sys

from ryot_ray.cli import main

sys.exit(main())
