"""Train an experiment: ``accelerate launch scripts/train.py --config avfusion/configs/tiny_synthetic.yaml ...``
is ``accelerate launch -m avfusion.cli.train ...`` (see ``avfusion train --help``)."""
import sys

from avfusion.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
