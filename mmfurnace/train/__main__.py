"""``python -m mmfurnace.train`` (and ``torchrun ... -m mmfurnace.train``): see
:mod:`mmfurnace.train.command`."""

import sys

from mmfurnace.train.command import main

if __name__ == "__main__":
    sys.exit(main())
