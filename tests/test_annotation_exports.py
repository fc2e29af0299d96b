"""Labels from annotation files as other tools write them, checked against an
independent rasteriser (shapely) rather than against the project's own fill.

ASAP and Aperio ImageScope list each vertex once; GeoJSON repeats the first
vertex at the end. Every format, with open and with closed rings, must give the
cells shapely puts inside the polygons.
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon as ShapelyPolygon
from shapely.geometry import box

import tfrecord_generator
from tests.conftest import shared_file
from utils.common.config import load_config
from utils.common.errors import AnnotationError
from utils.common.io import atomic_write_csv, read_csv
from utils.slides.annotations import Polygon, Region, read_annotations
from utils.slides.labels import rasterize_regions
from utils.tiles.records import read_index, record_files
from utils.tiles.synthetic import SyntheticRegion, make_slide, rectangle

ONE_CLASS = {"classes": [{"name": "background", "color": "#000000"}, {"name": "x", "color": "#FF0000"}],
             "rules": [[".*", "x"]], "ignore": [], "exclude": [], "priority": []}


def shapely_cells(polygons: list, shape: tuple[int, int], cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Cells whose centre shapely puts inside any polygon, and cells whose centre
    lies on a boundary (where "inside" is a convention, so not compared).

    ``make_valid`` turns self-touching or crossing rings into the areas the
    even-odd rule fills, which is what a scanline fill paints."""
    rows, cols = shape
    ys, xs = np.mgrid[0:rows, 0:cols]
    px, py = ((xs + 0.5) * cell).ravel(), ((ys + 0.5) * cell).ravel()
    inside = np.zeros(px.shape, bool)
    on_edge = np.zeros(px.shape, bool)
    tolerance = 1e-6 * max(1.0, cell)
    for polygon in polygons:
        geometry = shapely.make_valid(polygon)
        shapely.prepare(geometry)
        x0, y0, x1, y1 = geometry.bounds  # no centre outside the bounds is inside or on the boundary
        near = np.flatnonzero((px >= x0 - tolerance) & (px <= x1 + tolerance) & (py >= y0 - tolerance)
                              & (py <= y1 + tolerance))
        inside[near] |= shapely.contains_xy(geometry, px[near], py[near])
        on_edge[near] |= shapely.dwithin(geometry.boundary, shapely.points(px[near], py[near]), tolerance)
    return inside.reshape(shape), on_edge.reshape(shape)


def as_shapely(region_polygons) -> list[ShapelyPolygon]:
    return [ShapelyPolygon(p.exterior, p.holes) for p in region_polygons]


@pytest.mark.parametrize("name, cell", [("CMU-1-Small-Region.geojson", 4.0), ("geojson_example.json", 128.0),
                                        ("holed.geojson", 16.0), ("TCGA-EJ-5518-01Z-00-DX1.xml", 64.0)])
def test_real_annotation_files_rasterise_like_shapely(name, cell):
    regions = read_annotations(shared_file("annotations", name))
    polygons = [p for r in regions for p in as_shapely(r.polygons)]
    right, bottom = np.max([p.bounds[2:] for p in polygons], axis=0)
    shape = (int(bottom / cell) + 2, int(right / cell) + 2)
    labelled = rasterize_regions(regions, load_config(**ONE_CLASS), shape, cell).classes >= 0
    inside, on_edge = shapely_cells(polygons, shape, cell)
    assert inside.sum() > 100
    assert np.array_equal(labelled[~on_edge], inside[~on_edge])


# -- the same polygons in six exports ---------------------------------------------------------------------------

BOX = 320.0  # level-0 px of each part's square
CELL = 8.0
CLASSES = {"Tumour": "tumour", "Stroma": "stroma"}
SIX_CONFIG = {"classes": [{"name": "tumour", "color": "#FF0000"}, {"name": "stroma", "color": "#FF00FF"}],
              "rules": [["tumour", "tumour"], ["stroma", "stroma"]], "ignore": [], "exclude": ["exclusion"],
              "priority": []}


def star(radii: list[float], cx: float, cy: float, turn: float) -> np.ndarray:
    """A simple polygon with evenly spaced vertices around (cx, cy), open (no repeated vertex)."""
    angles = turn + np.linspace(0, 2 * np.pi, len(radii), endpoint=False)
    return np.stack([cx + np.cos(angles) * radii, cy + np.sin(angles) * radii], axis=1)


@st.composite
def layouts(draw):
    """One or two parts per class, each in its own square of a 2x2 grid; each part
    a star polygon whose radii stay above R/2, and maybe a hole within R*0.35 of
    its centre, so the hole lies inside its exterior."""
    boxes = draw(st.permutations(range(4)))
    counts = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    parts: dict[str, list[tuple[np.ndarray, list[np.ndarray]]]] = {}
    used = 0
    for name, count in zip(CLASSES, counts):
        for _ in range(count):
            slot = boxes[used]
            used += 1
            r = BOX * 0.45
            cx = (slot % 2 + 0.5) * BOX + draw(st.floats(-5, 5))
            cy = (slot // 2 + 0.5) * BOX + draw(st.floats(-5, 5))
            radii = draw(st.lists(st.floats(r / 2, r), min_size=5, max_size=16))
            exterior = star(radii, cx, cy, draw(st.floats(0, 1)))
            holes = []
            if draw(st.booleans()):
                hole_radii = draw(st.lists(st.floats(r * 0.1, r * 0.35), min_size=3, max_size=8))
                holes.append(star(hole_radii, cx + draw(st.floats(-3, 3)), cy, draw(st.floats(0, 1))))
            parts.setdefault(name, []).append((exterior, holes))
    return parts


def ring_points(ring: np.ndarray, closed: bool) -> list[list[float]]:
    return (np.vstack([ring, ring[:1]]) if closed else ring).tolist()


def write_geojson(path: Path, parts, closed: bool) -> None:
    features = [{"type": "Feature",
                 "geometry": {"type": "MultiPolygon",
                              "coordinates": [[ring_points(e, closed), *(ring_points(h, closed) for h in holes)]
                                              for e, holes in polygons]},
                 "properties": {"objectType": "annotation", "classification": {"name": name}}}
                for name, polygons in parts.items()]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def write_asap(path: Path, parts, closed: bool) -> None:
    """ASAP has no holes: they are regions of an exclusion group, as in CAMELYON."""
    out = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "<Annotations>"]
    shapes = [(name, e) for name, polygons in parts.items() for e, _ in polygons]
    shapes += [("Exclusion", h) for polygons in parts.values() for _, holes in polygons for h in holes]
    for k, (group, ring) in enumerate(shapes):
        out.append(f'<Annotation Name="Annotation {k}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">')
        out.append("<Coordinates>")
        out += [f'<Coordinate Order="{i}" X="{x!r}" Y="{y!r}" />' for i, (x, y) in enumerate(ring_points(ring, closed))]
        out.append("</Coordinates></Annotation>")
    out += ["</Annotations>", "<AnnotationGroups>", "</AnnotationGroups>", "</ASAP_Annotations>"]
    path.write_text("\n".join(out))


def write_aperio(path: Path, parts, closed: bool) -> None:
    out = ['<Annotations MicronsPerPixel="0.250000">']
    for k, (name, polygons) in enumerate(parts.items()):
        out.append(f'<Annotation Id="{k + 1}" Name="{name}" Type="4" LineColor="65280"><Regions>')
        rings = [(e, 0) for e, _ in polygons] + [(h, 1) for _, holes in polygons for h in holes]
        for j, (ring, negative) in enumerate(rings):
            out.append(f'<Region Id="{j + 1}" Type="0" NegativeROA="{negative}"><Vertices>')
            out += [f'<Vertex X="{x!r}" Y="{y!r}" Z="0"/>' for x, y in ring_points(ring, closed)]
            out.append("</Vertices></Region>")
        out.append("</Regions></Annotation>")
    out.append("</Annotations>")
    path.write_text("\n".join(out))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=layouts())
def test_six_exports_of_the_same_polygons_give_shapely_labels(tmp_path, parts):
    config = load_config(**SIX_CONFIG)
    shape = (int(2 * BOX / CELL), int(2 * BOX / CELL))
    results = {}
    for writer, suffix in ((write_geojson, "geojson"), (write_asap, "xml"), (write_aperio, "xml")):
        for closed in (False, True):
            path = tmp_path / f"{writer.__name__}_{closed}.{suffix}"
            writer(path, parts, closed)
            results[path.name] = rasterize_regions(read_annotations(path), config, shape, CELL).classes
    expected = np.full(shape, -1)
    on_edge = np.zeros(shape, bool)
    for name, polygons in parts.items():
        inside, edge = shapely_cells([ShapelyPolygon(e, holes) for e, holes in polygons], shape, CELL)
        expected[inside] = config.class_index(CLASSES[name])
        on_edge |= edge
    for name, classes in results.items():
        assert np.array_equal(classes[~on_edge], expected[~on_edge]), name
        assert np.array_equal(classes, results["write_geojson_True.geojson"]), name


def test_aperio_negative_region_is_a_hole_only_of_the_region_that_contains_it(tmp_path):
    l_shape = [[0, 0], [400, 0], [400, 100], [100, 100], [100, 400], [0, 400]]
    far_square = [[600, 600], [900, 600], [900, 900], [600, 900]]
    in_square = [[700, 700], [800, 700], [800, 800], [700, 800]]
    in_the_notch = [[200, 200], [300, 200], [300, 300], [200, 300]]  # in the L's bounding box, outside the L
    regions = ["".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in ring) for ring in
               (l_shape, far_square, in_square, in_the_notch)]
    negative = [0, 0, 1, 1]
    path = tmp_path / "layer.xml"
    path.write_text('<Annotations><Annotation Id="1" Name="Stroma"><Regions>' + "".join(
        f'<Region Id="{i}" NegativeROA="{n}"><Vertices>{v}</Vertices></Region>'
        for i, (v, n) in enumerate(zip(regions, negative))) + "</Regions></Annotation></Annotations>")
    with pytest.warns(UserWarning, match="1 negative regions outside every positive region"):
        regions_read = read_annotations(path)
    labelled = rasterize_regions(regions_read, load_config(**ONE_CLASS), (100, 100), 10.0).classes >= 0
    truth = [ShapelyPolygon(l_shape), ShapelyPolygon(far_square, [in_square])]
    inside, on_edge = shapely_cells(truth, (100, 100), 10.0)
    assert np.array_equal(labelled[~on_edge], inside[~on_edge])
    assert not labelled[25, 25], "the notch of the L stays unlabelled"


# -- what QuPath reads --------------------------------------------------------------------------------------------

SQUARE = [[[0, 0], [40, 0], [40, 40], [0, 40], [0, 0]]]


def read_json(tmp_path: Path, data) -> list:
    path = tmp_path / "objects.geojson"
    path.write_text(json.dumps(data))
    return read_annotations(path)


def test_bare_geometries_and_geometry_collections_are_read_unnamed(tmp_path):
    assert [(r.name, len(r.polygons)) for r in read_json(tmp_path, {"type": "Polygon", "coordinates": SQUARE})] \
        == [("", 1)]
    multi = {"type": "MultiPolygon", "coordinates": [SQUARE, [[[50, 50], [60, 50], [60, 60]]]]}
    assert [len(r.polygons) for r in read_json(tmp_path, multi)] == [2]
    collection = {"type": "GeometryCollection", "geometries": [multi, {"type": "Polygon", "coordinates": SQUARE}]}
    assert [len(r.polygons) for r in read_json(tmp_path, collection)] == [3]


def test_classifications_in_every_form_qupath_writes(tmp_path):
    def feature(properties):
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": SQUARE}, "properties": properties}

    data = [[feature({"classification": "Stroma"}),
             [feature({"classification": {"name": "Tumor", "colorRGB": -3670016}})]],
            {"type": "FeatureCollection", "features": [
                feature({"objectType": "annotation", "classification": {"names": ["Tumor", "Positive"],
                                                                        "color": [200, 0, 0]}}),
                feature({"name": "Region 7"})]}]
    assert [r.name for r in read_json(tmp_path, data)] == ["Stroma", "Tumor", "Tumor: Positive", "Region 7"]


def test_detections_cells_and_tiles_are_skipped_and_counted(tmp_path):
    def feature(object_type, key="objectType"):
        properties = {key: object_type} if key == "objectType" else {}
        data = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": SQUARE}, "properties": properties}
        if key == "id":
            data["id"] = object_type
        return data

    data = {"type": "FeatureCollection", "features": [
        feature("annotation"), feature("detection"), feature("detection"), feature("cell"), feature("tile"),
        feature("PathDetectionObject", key="id"), feature("PathAnnotationObject", key="id")]}
    with pytest.warns(UserWarning) as caught:
        regions = read_json(tmp_path, data)
    assert len(regions) == 2
    message = str(caught[0].message)
    assert "3 QuPath detection objects" in message and "1 QuPath cell objects" in message
    assert "1 QuPath tile objects" in message


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 50) | st.floats(allow_nan=True) | st.sampled_from(
        ["Feature", "FeatureCollection", "Polygon", "MultiPolygon", "GeometryCollection", "Point", "x"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "features", "geometry", "geometries", "coordinates", "properties",
                         "classification", "name", "names", "objectType", "id"]), children, max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=JSON_VALUES)
def test_no_geojson_input_ends_in_a_traceback(tmp_path, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            regions = read_json(tmp_path, data)
        except AnnotationError:
            return
    for region in regions:
        for polygon in region.polygons:
            assert np.array_equal(polygon.exterior[0], polygon.exterior[-1])


def test_asap_decimal_comma_coordinates(tmp_path):
    path = tmp_path / "comma.xml"
    path.write_text('<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon" PartOfGroup="Stroma">'
                    '<Coordinates><Coordinate Order="0" X="10,5" Y="0"/><Coordinate Order="1" X="20" Y="0"/>'
                    '<Coordinate Order="2" X="20" Y="10,25"/></Coordinates></Annotation></Annotations>'
                    '</ASAP_Annotations>')
    (region,) = read_annotations(path)
    np.testing.assert_array_equal(region.polygons[0].exterior, [[10.5, 0], [20, 0], [20, 10.25], [10.5, 0]])


# -- the original code's vocabulary ---------------------------------------------------------------------------------

ORIGINAL_UROTHELIUM = ["Grade 1 Low", "Grade 2 Low", "Grade 2 High", "Grade 3 High", "CIS", "Dysplasia",
                       "Urothelium no subclass", "Normal urothelium", "Cancerous urothelium",
                       "Urothelium without immune cell infiltration", "Urothelium With immune cell infiltration",
                       "Flat lesion", "Variant histology"]


def test_the_original_urothelium_vocabulary_maps_to_urothelium():
    config = load_config()
    for name in ORIGINAL_UROTHELIUM:
        assert config.annotation_role(name) == "class", name
        assert config.class_names[config.class_for_annotation(name)] == "urothelium", name


def test_untitled_and_copies_are_ignored_and_cancerous_invasive_area_removes_every_label():
    config = load_config()
    assert config.annotation_role("Untitled 3") == "ignore"
    assert config.annotation_role("Lamina propria Copy") == "ignore"
    assert config.annotation_role("Cancerous invasive area") == "exclude"
    square = np.array([[0, 0], [80, 0], [80, 80], [0, 80]], float)
    inner = np.array([[18, 18], [62, 18], [62, 62], [18, 62]], float)  # holds the centres 20, 28, ..., 60
    regions = [Region("Lamina propria", [Polygon(square)]), Region("Cancerous invasive area", [Polygon(inner)]),
               Region("Untitled 1", [Polygon(inner)])]
    cells = rasterize_regions(regions, config, (10, 10), 8.0)
    assert not cells.unmatched and cells.ignored == {"Untitled 1": 1}
    stroma = cells.classes == config.class_index("stroma")
    expected = np.ones((10, 10), bool)
    expected[2:8, 2:8] = False
    assert np.array_equal(stroma, expected)
    assert (cells.classes[~stroma] == -1).all()


# -- coverage and the annotated TCGA-like case ------------------------------------------------------------------------

def test_summary_reports_coverage_and_warns_about_regions_narrower_than_a_tile(tmp_path, capsys):
    t = 64
    regions = [SyntheticRegion("stroma", "Lamina propria", rectangle(2 * t, 2 * t, 10 * t, 8 * t)),
               SyntheticRegion("muscle", "Muscle", rectangle(4 * t + 20, 2 * t, 4 * t + 44, 8 * t))]
    slide, _ = make_slide(tmp_path / "slides", "narrow", 12 * t, 10 * t, regions,
                          annotations_dir=tmp_path / "annotations")
    code = tfrecord_generator.main(["--slides", str(slide), "--annotations", str(tmp_path / "annotations"),
                                    "--output", str(tmp_path / "tiles"), "--tile-size", str(t)])
    assert code == 0
    out = capsys.readouterr().err
    assert "only 0% of the" in out and "'muscle'" in out and "narrower than a 64-px tile at 40x (16 µm)" in out
    summary = json.loads((tmp_path / "tiles" / "narrow.summary.json").read_text())
    stroma, muscle = summary["coverage"]["stroma"], summary["coverage"]["muscle"]
    mm2 = (0.25 / 1000) ** 2
    stroma_area = (box(2 * t, 2 * t, 10 * t, 8 * t).area - 24 * 6 * t) * mm2
    assert stroma["annotated_mm2"] == pytest.approx(stroma_area, rel=0.03)
    assert muscle["annotated_mm2"] == pytest.approx(24 * 6 * t * mm2, rel=0.1)
    assert muscle["labelled_tiles_mm2"] == 0 and muscle["annotated_in_labelled_tiles_mm2"] == 0
    stroma_tiles = summary["tiles_per_class"]["stroma"]
    assert stroma["labelled_tiles_mm2"] == pytest.approx(stroma_tiles * t * t * mm2)
    assert not any("'stroma'" in line for line in summary["warnings"])


def test_asap_open_rings_label_the_windows_their_polygons_cover(tmp_path):
    """The report that opened this work: four ASAP polygons (open rings) on a
    real slide gave 4 tiles of one class. Here at least 90% of the grid windows
    that a polygon covers by 80% or more must carry its class."""
    slide = shared_file("slides", "CMU-1-Small-Region.svs")
    rng = np.random.default_rng(0)

    def blob(cx, cy, rx, ry):
        angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
        r = rng.uniform(0.8, 1.0, 9)
        return np.stack([cx + rx * r * np.cos(angles), cy + ry * r * np.sin(angles)], 1)

    drawn = [("Grade 3 High", blob(1140, 940, 180, 260)), ("Grade 3 High", blob(780, 2500, 140, 300)),
             ("Lamina propria", blob(1540, 2180, 220, 300)), ("Lamina propria", blob(1020, 1600, 140, 280))]
    parts = {}
    for name, ring in drawn:
        parts.setdefault(name, []).append((ring, []))
    (tmp_path / "ann").mkdir()
    write_asap(tmp_path / "ann" / f"{slide.stem}.xml", parts, closed=False)
    assert tfrecord_generator.main(["--slides", str(slide), "--annotations", str(tmp_path / "ann"), "--output",
                                    str(tmp_path / "tiles"), "--magnifications", "20", "5", "1.25"]) == 0
    summary = json.loads((tmp_path / "tiles" / f"{slide.stem}.summary.json").read_text())
    index = read_index(record_files(tmp_path / "tiles"))
    names = [c["name"] for c in summary["config"]["classes"]]
    got = {(int(x), int(y)): names[label] for x, y, label in zip(index.x, index.y, index.label)}
    stride, (rows, cols) = summary["stride_level0"], summary["grid_shape"]
    want = {"Grade 3 High": "urothelium", "Lamina propria": "stroma"}
    covered, carried = 0, 0
    for name, ring in drawn:
        polygon = ShapelyPolygon(ring)
        for r in range(rows):
            for c in range(cols):
                window = box(c * stride, r * stride, (c + 1) * stride, (r + 1) * stride)
                if polygon.intersection(window).area >= 0.8 * window.area:
                    covered += 1
                    carried += got.get((int((c + 0.5) * stride), int((r + 0.5) * stride))) == want[name]
    assert covered >= 8 and carried >= 0.9 * covered
    assert set(summary["tiles_per_class"]) == {"stroma", "urothelium"}


def test_csv_outputs_keep_commas_quotes_and_any_letters(tmp_path):
    rows = [["Grade 3, High", 'the "best" region', "Lamina propria – urotélio ß"], ["a", "b\nc", ""]]
    atomic_write_csv(tmp_path / "t.csv", ["one", "two", "three"], rows)
    back = read_csv(tmp_path / "t.csv")
    assert [[row["one"], row["two"], row["three"]] for row in back] == rows


def test_class_names_in_any_case_are_their_class_and_qupath_ignore_is_ignored():
    """Query squares come back named like the configured classes, or with
    QuPath's own built-in classes ("Stroma", "Ignore*"): no rule is needed for them."""
    config = load_config()
    assert not any(re.fullmatch(p, "damaged", re.IGNORECASE) for p, _ in config.rules), "no rule names it"
    for name, class_name in [("damaged", "damaged"), ("Damaged", "damaged"), ("Stroma", "stroma"),
                             (" urothelium ", "urothelium")]:
        assert config.annotation_role(name) == "class", name
        assert config.class_names[config.class_for_annotation(name)] == class_name, name
    assert config.annotation_role("Ignore*") == "ignore" and config.annotation_role("ignore*") == "ignore"
    custom = load_config(ignore=[])
    assert custom.annotation_role("Ignore*") == "ignore", "whatever the configuration's own ignore list"
    square = np.array([[0, 0], [80, 0], [80, 80], [0, 80]], float)
    cells = rasterize_regions([Region("Damaged", [Polygon(square)]), Region("Ignore*", [Polygon(square)])],
                              config, (10, 10), 8.0)
    assert not cells.unmatched and cells.ignored == {"Ignore*": 1}


def qupath_feature(name: str, ring: list, children: list | None = None, key: str = "childObjects") -> dict:
    """A QuPath annotation feature, with its descendants inside its properties
    as QuPath writes them when it exports the hierarchy."""
    properties = {"objectType": "annotation", "classification": {"name": name}}
    if children:
        properties[key] = children
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}


def test_child_objects_of_a_hierarchy_export_are_read(tmp_path):
    def square(x: float) -> list:
        return [[x, 0], [x + 10, 0], [x + 10, 10], [x, 10], [x, 0]]

    grandchild = qupath_feature("Blood", square(40))
    child = qupath_feature("Muscle", square(20), [grandchild], key="children")
    detection = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square(60)]},
                 "properties": {"objectType": "detection"}}
    path = tmp_path / "hierarchy.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection",
                                "features": [qupath_feature("Tumor", square(0), [child, detection])]}))
    with pytest.warns(UserWarning, match="1 QuPath detection objects"):
        regions = read_annotations(path)
    assert sorted((r.name, float(r.polygons[0].exterior[0, 0])) for r in regions) == \
        [("Blood", 40.0), ("Muscle", 20.0), ("Tumor", 0.0)]


def test_compressed_exports_as_qupath_writes_them_read_as_the_plain_file(tmp_path):
    """QuPath writes ``.geojson.gz`` (gzip) and ``.zip`` (one GeoJSON member
    named after the archive) and reads every member of a zip."""
    plain = tmp_path / "slide.geojson"
    plain.write_text(json.dumps({"type": "FeatureCollection", "features": [
        qupath_feature("Stroma", [[0, 0], [5, 0], [5, 5], [0, 0]]),
        qupath_feature("Tumor", [[10, 10], [30, 10], [30, 40], [10, 10]])]}))
    expected = [(r.name, r.polygons[0].exterior.tolist()) for r in read_annotations(plain)]
    gz = tmp_path / "slide.geojson.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    single = tmp_path / "slide.zip"
    with zipfile.ZipFile(single, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("slide.geojson", plain.read_text())
    for path in (gz, single):
        assert [(r.name, r.polygons[0].exterior.tolist()) for r in read_annotations(path)] == expected
    split = tmp_path / "split.zip"
    features = json.loads(plain.read_text())["features"]
    with zipfile.ZipFile(split, "w") as archive:
        archive.writestr("a.geojson", json.dumps(features[0]))
        archive.writestr("notes.txt", "not objects")
        archive.writestr("b.json", json.dumps(features[1]))
    assert sorted(r.name for r in read_annotations(split)) == ["Stroma", "Tumor"]
    (tmp_path / "broken.geojson.gz").write_bytes(b"not gzip at all")
    with pytest.raises(AnnotationError, match="cannot read annotation file"):
        read_annotations(tmp_path / "broken.geojson.gz")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as archive:
        archive.writestr("readme.txt", "nothing")
    with pytest.raises(AnnotationError, match="without a .geojson or .json file"):
        read_annotations(tmp_path / "empty.zip")


def _extract(slide: Path, annotations: Path, out: Path, *extra: str) -> tuple[dict, dict[tuple[int, int], int]]:
    assert tfrecord_generator.main(["--slides", str(slide), "--annotations", str(annotations), "--output", str(out),
                                    "--magnifications", "20", "5", "1.25", *extra]) == 0
    summary = json.loads((out / f"{slide.stem}.summary.json").read_text())
    index = read_index(record_files(out))
    return summary, {(int(x), int(y)): int(label) for x, y, label in zip(index.x, index.y, index.label)}


def test_every_annotation_file_of_a_slide_is_read_and_a_near_miss_is_named(tmp_path):
    """An ASAP XML and a QuPath GeoJSON named after the file (``slide.svs.geojson``)
    beside one slide: both are read, giving the labels of one file holding all
    the regions; where they disagree the area is reported, and matches shapely's
    intersection. With --unlabeled, a file named nearly right is named in the
    warning instead of the slide being pooled whole in silence."""
    slide = shared_file("slides", "CMU-1-Small-Region.svs")
    tumour = [(np.array([[900, 700], [1400, 700], [1400, 1200], [900, 1200]], float), [])]
    stroma = [(np.array([[1300, 1900], [1800, 1900], [1800, 2500], [1300, 2500]], float), [])]
    for folder in ("one", "two", "overlap", "near"):
        (tmp_path / folder).mkdir()
    write_asap(tmp_path / "one" / f"{slide.stem}.xml", {"Grade 3 High": tumour, "Lamina propria": stroma}, True)
    write_asap(tmp_path / "two" / f"{slide.stem}.xml", {"Grade 3 High": tumour}, True)
    write_geojson(tmp_path / "two" / f"{slide.name}.geojson", {"Lamina propria": stroma}, True)
    reference, labels = _extract(slide, tmp_path / "one", tmp_path / "tiles_one")
    both, merged = _extract(slide, tmp_path / "two", tmp_path / "tiles_two")
    assert merged == labels and both["tiles_per_class"] == reference["tiles_per_class"]
    assert set(reference["tiles_per_class"]) == {"urothelium", "stroma"}
    assert any(f"{slide.stem}.xml and {slide.name}.geojson together" in w and "no area" in w
               for w in both["warnings"])

    shifted = [(tumour[0][0] + [300, 250], [])]
    write_asap(tmp_path / "overlap" / f"{slide.stem}.xml", {"Grade 3 High": tumour}, True)
    write_geojson(tmp_path / "overlap" / f"{slide.stem}.geojson", {"Lamina propria": shifted}, True)
    summary, _ = _extract(slide, tmp_path / "overlap", tmp_path / "tiles_overlap")
    (line,) = [w for w in summary["warnings"] if "together" in w]
    reported = float(re.search(r"to ([\d.e+-]+) mm2", line).group(1))
    expected = ShapelyPolygon(tumour[0][0]).intersection(ShapelyPolygon(shifted[0][0])).area \
        * (summary["base_mpp"] / 1000) ** 2
    assert reported == pytest.approx(expected, rel=0.1)

    write_asap(tmp_path / "near" / f"{slide.stem}_annotations.xml", {"Grade 3 High": tumour}, True)
    pooled, _ = _extract(slide, tmp_path / "near", tmp_path / "tiles_near", "--unlabeled")
    assert set(pooled["tiles_per_class"]) == {"unlabeled"}
    (line,) = [w for w in pooled["warnings"] if "no annotation file" in w]
    assert f"{slide.stem}.geojson" in line and f"{slide.stem}_annotations.xml" in line and "pooled" in line
