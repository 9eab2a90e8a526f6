"""Step 2: GPP_M (480 m) → daily 30 m maps with a conditional diffusion model.

``network`` (the UNet) and ``schedule`` (noise schedule and samplers) are the model;
``conditions`` stacks what it is conditioned on; ``checkpoint`` saves and loads it (weights
only); ``tiling`` cuts a grid into overlapping, position-seeded tiles and blends them back;
``sampling`` draws a tile's ensemble; ``consistency`` ties 30 m maps to GPP_M; ``pairs``
makes the GPP_L/GPP_M training and test pairs; ``train`` and ``evaluate`` are the commands;
``pure_pixel`` is the Yu et al. (2022) baseline; ``cluster`` and ``actors`` run sampling on
GPU-pinned Dask actors. A new downscaler is a scheme in ``conditions`` with its own
condition stack and checkpoint.
"""

from unique_cube.downscale.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from unique_cube.downscale.conditions import GPP_SCALE, SCHEMES, condition_stack
from unique_cube.downscale.sampling import downscale, sample_tile
from unique_cube.downscale.tiling import Tile, blend_tiles, tile_plan
from unique_cube.downscale.train import train, train_downscaler

__all__ = [
    "GPP_SCALE",
    "SCHEMES",
    "Checkpoint",
    "Tile",
    "blend_tiles",
    "condition_stack",
    "downscale",
    "load_checkpoint",
    "sample_tile",
    "save_checkpoint",
    "tile_plan",
    "train",
    "train_downscaler",
]
