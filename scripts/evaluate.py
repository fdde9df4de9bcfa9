"""`python scripts/evaluate.py ...` is `avfusion evaluate ...` (see `avfusion evaluate --help`)."""
import sys

from avfusion.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
