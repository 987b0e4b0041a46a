import sys

from rayopt.cli import main

sys.exit(main())
