"""`python scripts/benchmark.py ...` is `avfusion bench ...` (see `avfusion bench --help`)."""
import sys

from avfusion.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
