"""``python -m napari_gitseg.cli``: the ``gitseg`` command (as under ``torchrun -m napari_gitseg.cli``)."""

import sys

from napari_gitseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
