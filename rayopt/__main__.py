import sys

from rayopt.cli import main

if __name__ == "__main__":  # a spawned worker process (rayopt analyze's plotter) re-imports this
    sys.exit(main())
