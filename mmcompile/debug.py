"""Pictures of what the sparse kernel computes (``mmcompile.patterns.pictures``, where the run time
reaches them too): ``block_map``, ``png_bytes``, ``write_mask_pictures``."""

from mmcompile.patterns.pictures import COLUMN, DIAGONAL, LISTED, block_map, png_bytes, write_mask_pictures

__all__ = ["block_map", "png_bytes", "write_mask_pictures", "LISTED", "DIAGONAL", "COLUMN"]
