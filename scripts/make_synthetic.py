"""`python scripts/make_synthetic.py ...` is `avfusion synth ...` (see `avfusion synth --help`)."""
import sys

from avfusion.cli.synth import main

if __name__ == "__main__":
    sys.exit(main())
