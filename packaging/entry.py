"""The frozen program's entry point: the same dispatcher as `python -m runner`."""
import sys

from runner.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
