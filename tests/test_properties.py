"""Property-based tests of the geometry: tile windows, polygon fill, holes and
the map-to-GeoJSON-to-raster round trip, on inputs hypothesis chooses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utils.common.config import load_config
from utils.slides.annotations import Polygon, Region
from utils.slides.geometry import read_triplets, slide_geometry
from utils.slides.labels import fill_rings, rasterize_regions
from utils.slides.qupath import mask_polygons
from utils.slides.slide import Slide
from utils.tiles.synthetic import write_pyramid_tiff

SIDE = 1024  # level-0 px of the gradient slide
TILE = 32
PROPERTIES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def gradient_slide(tmp_path_factory) -> Path:
    """Uncompressed pyramid (levels 1, 4, 16) whose red is x / 4 and green y / 4
    at level 0, blue 0: any pixel tells where on the slide it came from, also
    after averaging down (a linear ramp averages to its centre value), and
    padding (white glass) is told apart by its blue."""
    x = np.arange(SIDE) // 4
    image = np.zeros((SIDE, SIDE, 3), np.uint8)
    image[..., 0] = x[None, :]
    image[..., 1] = x[:, None]
    path = tmp_path_factory.mktemp("gradient") / "gradient.tiff"
    write_pyramid_tiff(path, image, 0.25, compression=None)
    return path


@PROPERTIES
@given(row=st.integers(0, SIDE // TILE - 1), col=st.integers(0, SIDE // TILE - 1))
def test_windows_share_their_centre_at_every_scale_and_are_padded_not_shifted(gradient_slide, row, col):
    config = load_config(tile_size=TILE, magnifications=[40, 10, 2.5])
    with Slide(gradient_slide) as slide:
        geometry = slide_geometry(slide, config)
        _, tiles = next(read_triplets(slide, geometry, np.array([row]), np.array([col])))
    cx, cy = (col + 0.5) * geometry.stride, (row + 0.5) * geometry.stride
    for scale, tile in zip(geometry.scales, tiles):
        # Level-0 position of every output pixel's centre if the window is centred on (cx, cy).
        offsets = (np.arange(TILE) + 0.5 - TILE / 2) * scale.factor
        px, py = np.meshgrid(cx + offsets, cy + offsets)
        inside = (px >= 0) & (px < SIDE) & (py >= 0) & (py < SIDE)
        margin = scale.factor / 2 + 1  # pixels that straddle the slide edge may mix glass and tissue
        clear_inside = (px >= margin) & (px < SIDE - margin) & (py >= margin) & (py < SIDE - margin)
        tile = tile[0].astype(float)
        assert np.all(tile[~inside] == 255), "outside the slide: background padding"
        assert np.all(tile[clear_inside][:, 2] == 0), "inside the slide: slide pixels, not padding"
        np.testing.assert_allclose(tile[clear_inside][:, 0], px[clear_inside] / 4 - 0.5, atol=1.6)
        np.testing.assert_allclose(tile[clear_inside][:, 1], py[clear_inside] / 4 - 0.5, atol=1.6)


def star_polygon(radii: list[float], cx: float, cy: float) -> np.ndarray:
    """A simple polygon: vertices at increasing angles around (cx, cy)."""
    angles = np.linspace(0, 2 * np.pi, len(radii), endpoint=False)
    ring = np.stack([cx + np.cos(angles) * radii, cy + np.sin(angles) * radii], axis=1)
    return np.vstack([ring, ring[:1]])


def shoelace(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


@PROPERTIES
@given(radii=st.lists(st.floats(3, 30), min_size=3, max_size=24), cx=st.floats(30, 34), cy=st.floats(30, 34))
def test_rasterised_area_matches_the_polygon_area_within_its_boundary_cells(radii, cx, cy):
    ring = star_polygon(radii, cx, cy)
    filled = fill_rings([ring - 0.5], (0, 0, 64, 64))  # cell (i, j) has its centre at (j + 0.5, i + 0.5)
    perimeter = float(np.linalg.norm(np.diff(ring, axis=0), axis=1).sum())
    # Only cells the boundary crosses can be counted wrongly, and there are at most
    # about perimeter * sqrt(2) + 4 of them; on average the errors cancel far better.
    assert abs(filled.sum() - shoelace(ring)) <= np.sqrt(2) * perimeter + 4


def rectangle(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], float)


@PROPERTIES
@given(outer=st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(30, 40), st.integers(30, 40)),
       hole=st.tuples(st.integers(12, 18), st.integers(12, 18), st.integers(20, 28), st.integers(20, 28)),
       cell=st.sampled_from([1.0, 4.0, 16.0]))
def test_holes_stay_unlabelled(outer, hole, cell):
    config = load_config()
    region = Region("Stroma", [Polygon(rectangle(*outer) * cell, [rectangle(*hole) * cell])])
    cells = rasterize_regions([region], config, (48, 48), cell)
    centres = np.arange(48) + 0.5
    cx, cy = np.meshgrid(centres, centres)

    def within(box: tuple[int, int, int, int]) -> np.ndarray:
        return (cx > box[0]) & (cx < box[2]) & (cy > box[1]) & (cy < box[3])

    expected = within(outer) & ~within(hole)
    assert np.array_equal(cells.classes >= 0, expected)
    assert (cells.classes[expected] == config.class_index("stroma")).all()


@PROPERTIES
@given(seed=st.integers(0, 2**32 - 1), shape=st.tuples(st.integers(1, 14), st.integers(1, 14)),
       fill=st.floats(0.2, 0.9), cell=st.sampled_from([1.0, 8.0, 64.0]))
def test_map_to_geojson_to_raster_round_trip_is_exact(seed, shape, fill, cell):
    rng = np.random.default_rng(seed)
    names = load_config().class_names
    config = load_config(rules=[[name, name] for name in names])
    tissue_map = np.where(rng.random(shape) < fill, rng.integers(0, config.num_classes, shape), -1)
    regions = [Region(name, [Polygon(np.array(rings[0]), [np.array(h) for h in rings[1:]])
                             for rings in mask_polygons(tissue_map == c, cell)])
               for c, name in enumerate(config.class_names) if (tissue_map == c).any()]
    back = rasterize_regions(regions, config, shape, cell).classes
    assert np.array_equal(back, tissue_map)


def test_threaded_reads_give_the_same_tiles_as_one_thread(synthetic_slide):
    """Threads share one file handle: their seeks and reads must not interleave."""
    slide_path, _ = synthetic_slide
    config = load_config(tile_size=TILE, magnifications=[40, 10, 2.5])

    def read(threads: int) -> list[np.ndarray]:
        with Slide(slide_path) as slide:
            geometry = slide_geometry(slide, config)
            rows, cols = np.nonzero(np.ones(geometry.grid_shape, bool))
            out = [np.zeros((len(rows), TILE, TILE, 3), np.uint8) for _ in geometry.scales]
            for indices, tiles in read_triplets(slide, geometry, rows, cols, threads=threads):
                for scale, tile in zip(out, tiles):
                    scale[indices] = tile
            return out

    reference = read(1)
    for _ in range(5):
        for one, many in zip(reference, read(8)):
            np.testing.assert_array_equal(one, many)
