"""Slide metadata, level choice and annotation parsing, on real files where
``../shared/data`` is present."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import tfrecord_generator
from tests.conftest import shared_file
from utils.common.config import load_config
from utils.common.errors import AnnotationError, ConfigError, MagnificationError, MppError
from utils.slides.annotations import read_annotations
from utils.slides.geometry import slide_geometry
from utils.slides.labels import rasterize_regions
from utils.slides.slide import Slide
from utils.tiles.records import read_index, record_files


def test_paper_annotation_names_map_to_paper_classes():
    config = load_config()
    expected = {
        "Blood": "blood", "Cauterized": "damaged", "Blurry": "damaged", "Folding": "damaged", "Others": "damaged",
        "Muscle": "muscle", "Lamina propria": "stroma", "Lamina": "stroma", "Grade 2 High": "urothelium",
        "CIS": "urothelium", "Dysplasia": "urothelium", "Urothelium": "urothelium", "Variant": "urothelium",
        "Flat lesion": "urothelium",
    }
    for name, class_name in expected.items():
        assert config.class_names[config.class_for_annotation(name)] == class_name, name
    assert config.class_for_annotation("Tumor") is None
    assert config.paint_order()[-2:] == [config.class_index("muscle"), config.class_index("blood")]


def test_config_file_overrides_and_rejects_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tile_size: 64\nmagnifications: [20, 5, 1.25]\n")
    config = load_config(path, tile_size=32)
    assert config.tile_size == 32 and config.magnifications == [20.0, 5.0, 1.25]
    path.write_text("tile_sise: 64\n")
    with pytest.raises(ConfigError, match="tile_sise"):
        load_config(path)


def test_svs_mpp_from_vendor_metadata():
    with Slide(shared_file("slides", "CMU-1-Small-Region.svs")) as slide:
        assert slide.mpp == pytest.approx(0.499)


def test_wrong_scale_metadata_demands_mpp():
    path = shared_file("slides", "CropBreastSlide.tiff")
    with pytest.raises(MppError, match="--mpp") as error:
        Slide(path)
    assert "CropBreastSlide" in str(error.value) and "264.6" in str(error.value)
    with Slide(path, mpp=0.5) as slide:
        assert slide.mpp == 0.5


def test_forty_x_from_a_twenty_x_scan_is_a_clear_error():
    with Slide(shared_file("slides", "CMU-1-Small-Region.svs")) as slide:
        with pytest.raises(MagnificationError, match="--magnifications 20 5 1.25"):
            slide_geometry(slide, load_config())
        upsampled = slide_geometry(slide, load_config(allow_upsampling=True))
        assert upsampled.scales[0].factor == pytest.approx(0.25 / 0.499)


def test_pyramid_levels_are_chosen_by_mpp():
    with Slide(shared_file("slides", "CMU-1-Small-Region.pyramid.tiff")) as slide:
        geometry = slide_geometry(slide, load_config(magnifications=[20, 5, 1.25]))
    # 20x: level 0 (snapped to 1:1); 5x: level 2 (4x, snapped); 1.25x: level 3 (8x) resized by 2.
    assert [s.level for s in geometry.scales] == [0, 2, 3]
    assert geometry.scales[0].factor == 1.0
    assert geometry.scales[2].factor == pytest.approx(10 / 1.25 / 0.499)


def test_cmu_slide_labels_fall_inside_their_polygons(tmp_path):
    slide = shared_file("slides", "CMU-1-Small-Region.svs")
    geojson = shared_file("annotations", "CMU-1-Small-Region.geojson")
    config = tmp_path / "cmu.json"
    config.write_text(json.dumps({
        "classes": [{"name": "background", "color": "#000000"}, {"name": "epithelium", "color": "#F58230"},
                    {"name": "stroma", "color": "#F032E6"}],
        "rules": [["epithelium", "epithelium"], ["stroma", "stroma"]],
        "priority": [],
    }))
    code = tfrecord_generator.main(["--slides", str(slide), "--annotations", str(geojson.parent),
                                    "--output", str(tmp_path / "tiles"), "--config", str(config),
                                    "--magnifications", "20", "5", "1.25", "--tile-size", "64"])
    assert code == 0
    index = read_index(record_files(tmp_path / "tiles"))
    regions: dict[str, list[np.ndarray]] = {}
    for region in read_annotations(geojson):
        regions.setdefault(region.name, []).extend(p.exterior.astype(np.float32) for p in region.polygons)
    names = {1: "Epithelium", 2: "Stroma"}
    assert set(index.label) == {1, 2}
    for label, x, y in zip(index.label, index.x, index.y):
        polygons = regions[names[label]]
        assert any(cv2.pointPolygonTest(p, (float(x), float(y)), False) >= 0 for p in polygons), (label, x, y)
    summary = json.loads((tmp_path / "tiles" / "CMU-1-Small-Region.summary.json").read_text())
    assert summary["base_mpp"] == pytest.approx(0.499)


def test_qupath_list_of_features_with_multipolygons():
    regions = read_annotations(shared_file("annotations", "geojson_example.json"))
    assert [(r.name, len(r.polygons)) for r in regions] == [("Tumor", 3), ("Invborder", 5)]


def test_aperio_xml_class_from_attribute():
    regions = read_annotations(shared_file("annotations", "TCGA-EJ-5518-01Z-00-DX1.xml"))
    assert [r.name for r in regions] == ["CaP", "Description", "Description"]
    assert sum(len(r.polygons) for r in regions) == 4
    assert all(len(p.exterior) >= 3 for r in regions for p in r.polygons)


def test_holes_stay_unlabelled():
    regions = read_annotations(shared_file("annotations", "holed.geojson"))
    config = load_config(rules=[[".*", "stroma"]])
    cell = 16.0
    cells = rasterize_regions(regions, config, (19491 // 16 + 2, 13369 // 16 + 2), cell)
    hole = regions[0].polygons[0].holes[0]
    hx, hy = hole.mean(axis=0)
    stroma = config.class_index("stroma")
    assert cells.classes[int(hy / cell), int(hx / cell)] == -1
    assert cells.classes[int(16800 / cell), int(10150 / cell)] == stroma
    area_cells = (cells.classes == stroma).sum() * cell * cell
    ext = regions[0].polygons[0].exterior
    ext_area = cv2.contourArea(ext.astype(np.float32))
    hole_area = sum(cv2.contourArea(h.astype(np.float32)) for h in regions[0].polygons[0].holes)
    assert area_cells == pytest.approx(ext_area - hole_area, rel=0.02)


def test_asap_xml(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(
        '<ASAP_Annotations><Annotations>'
        '<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="Muscle"><Coordinates>'
        '<Coordinate Order="1" X="100" Y="0"/><Coordinate Order="0" X="0" Y="0"/>'
        '<Coordinate Order="2" X="100" Y="100"/><Coordinate Order="3" X="0" Y="100"/>'
        '</Coordinates></Annotation></Annotations><AnnotationGroups/></ASAP_Annotations>'
    )
    (region,) = read_annotations(path)
    assert region.name == "Muscle"
    np.testing.assert_array_equal(region.polygons[0].exterior[:2], [[0, 0], [100, 0]])


def test_broken_annotation_file_is_an_annotation_error(tmp_path):
    path = tmp_path / "x.geojson"
    path.write_text("{not json")
    with pytest.raises(AnnotationError, match="x.geojson"):
        read_annotations(path)


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "CMU-1-Small-Region.pyramid.tiff"])
def test_direct_tile_decoding_equals_tiffslide_including_non_integer_downsamples(name):
    """Regression: reading through tiffslide at a level whose downsample is not an
    integer (2.0003) used to land one pixel short, since it truncates x / downsample."""
    direct = Slide(shared_file("slides", name))
    general = Slide(shared_file("slides", name))
    general._tiles = None
    assert direct._tiles is not None
    rng = np.random.default_rng(0)
    for _ in range(100):
        level = int(rng.integers(len(direct.level_dimensions)))
        width, height = direct.level_dimensions[level]
        ds = direct.level_downsamples[level]
        w, h = int(rng.integers(1, min(width, 300))), int(rng.integers(1, min(height, 300)))
        lx, ly = int(rng.integers(-40, width - w + 40)), int(rng.integers(-40, height - h + 40))
        x, y = int(np.ceil(lx * ds - 1e-6)), int(np.ceil(ly * ds - 1e-6))
        np.testing.assert_array_equal(direct.read(level, x, y, w, h), general.read(level, x, y, w, h))


def test_polygon_fill_takes_cells_by_centre_not_every_cell_an_edge_touches():
    """Regression: cv2.fillPoly also painted the cells an edge merely touched, so a
    rectangle on cell borders grew by one cell on two sides."""
    from utils.slides.annotations import Polygon, Region

    config = load_config(rules=[[".*", "stroma"]])
    square = np.array([[16, 16], [48, 16], [48, 40], [16, 40], [16, 16]], float)
    cells = rasterize_regions([Region("x", [Polygon(square)])], config, (10, 10), 8.0).classes >= 0
    expected = np.zeros((10, 10), bool)
    expected[2:5, 2:6] = True
    np.testing.assert_array_equal(cells, expected)
