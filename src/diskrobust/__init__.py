"""diskrobust: lumbar disk shape reconstruction from MR and its adversarial robustness."""

__version__ = "0.1.0"

NUM_POINTS = 176
POINTS_PER_SIDE = 44
PATCH_SIZE = 128
