"""Whole-slide images and what is drawn on them: one reader for every
format with its µm/px (``slide``, ``slide_files``, ``tiff_tiles``), the tissue
mask (``tissue``), the tile grid and each scale's window (``geometry``), the
annotations read from QuPath, ASAP and ImageScope and the GeoJSON written for
QuPath (``annotations``, ``qupath``), and the tile labels the regions give
(``labels``). It may import ``utils.common`` only."""
