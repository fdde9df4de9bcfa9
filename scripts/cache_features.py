"""`python scripts/cache_features.py ...` is `avfusion cache ...` (see `avfusion cache --help`)."""
import sys

from avfusion.cli.cache import main

if __name__ == "__main__":
    sys.exit(main())
