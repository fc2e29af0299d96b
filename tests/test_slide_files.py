"""Finding slides as the readers see them: DICOM series (written with pydicom)
are one slide each, auxiliary files are never slides, and each vendor goes to
the reader that gives its pixels right (checked against the pixels written
and against OpenSlide)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
from pydicom.uid import generate_uid

import active_learning_inference
import tfrecord_generator
from tests.conftest import TILE, known_regions, shared_file
from tests.test_inference import colour_model
from tests.vendor_files import write_dicom_instance, write_dicom_series, write_leica_scn, write_philips_tiff
from utils.common.config import load_config
from utils.learning import queries
from utils.network.model import save_model
from utils.slides.annotations import read_annotations
from utils.slides.labels import rasterize_regions
from utils.slides.slide import Slide
from utils.slides.slide_files import find_slides
from utils.tiles import extract
from utils.tiles.records import read_index, record_files
from utils.tiles.synthetic import SOURCE_STAIN, random_layout, render, write_geojson, write_pyramid_tiff


def tissue_image(width: int = 640, height: int = 448, seed: int = 0) -> np.ndarray:
    return render(width, height, random_layout(width, height, seed, margin=32), seed, SOURCE_STAIN)


def test_a_dicom_series_is_one_slide_named_after_its_folder(tmp_path):
    image = tissue_image()
    write_dicom_series(tmp_path / "cohort" / "case_A", image)
    write_dicom_series(tmp_path / "cohort" / "case_B", tissue_image(seed=1))
    # Some scanners store the label as a series of its own: no slide, said once.
    write_dicom_instance(tmp_path / "cohort" / "case_B" / "own_label.dcm", image[:64, :96].copy(), "LABEL",
                         generate_uid(), generate_uid(), generate_uid(), 0.5)
    with pytest.warns(UserWarning, match=r"case_B: skipped DICOM file\(s\) own_label.dcm"):
        slides = find_slides([tmp_path / "cohort"])
    assert [s.name for s in slides] == ["case_A", "case_B"], "label and overview files are no slides"
    assert [s.path.name for s in slides] == ["level0.dcm", "level0.dcm"]
    assert [s.name for s in find_slides([tmp_path / "cohort" / "case_A"])] == ["case_A"]
    assert [s.name for s in find_slides([tmp_path / "cohort" / "case_A" / "label.dcm"])] == ["case_A"]
    with Slide(slides[0].path, name=slides[0].name) as slide:
        assert (slide.vendor, slide.backend) == ("dicom", "openslide")
        assert slide.level_dimensions == [(640, 448), (320, 224)]
        assert slide.mpp == pytest.approx(0.5)
        assert np.array_equal(slide.read(0, 0, 0, 640, 448), image)
        assert np.array_equal(slide.read(1, 0, 0, 320, 224), image[::2, ::2])


def test_loose_dicom_files_of_two_series_are_two_slides_named_by_series(tmp_path):
    first = write_dicom_series(tmp_path / "loose", tissue_image(), prefix="a_")
    second = write_dicom_series(tmp_path / "loose", tissue_image(seed=2), prefix="b_")
    slides = find_slides([tmp_path / "loose"])
    assert sorted(s.name for s in slides) == sorted([first, second])
    assert {s.path.name for s in slides} == {"a_level0.dcm", "b_level0.dcm"}
    assert [s.name for s in find_slides([tmp_path / "loose" / "b_overview.dcm"])] == [second]


def test_discovery_asks_the_readers_and_skips_auxiliary_files(tmp_path):
    folder = tmp_path / "slides"
    image = tissue_image()
    write_pyramid_tiff(folder / "plain.tiff", image, 0.25)
    shutil.copy(folder / "plain.tiff", folder / "multiplex.qptiff")
    shutil.copy(folder / "plain.tiff", folder / "scanner_export.img")  # a TIFF under an unknown suffix
    write_philips_tiff(folder / "philips.tiff", image)
    companion = folder / "mirax_case"
    companion.mkdir()
    (companion / "Slidedat.ini").write_text("[GENERAL]\n")
    (companion / "Data0000.dat").write_bytes(b"\0" * 1024)
    (folder / "plain.ndpa").write_text("<annotations/>")
    (folder / "notes.txt").write_text("scanned 2026\n")
    cv2.imwrite(str(folder / "photo.png"), image)
    names = [s.name for s in find_slides([folder])]
    assert names == ["multiplex", "philips", "plain", "scanner_export"]


def test_each_vendor_goes_to_the_reader_that_reads_it_right(tmp_path):
    image = tissue_image(768, 512)
    write_philips_tiff(tmp_path / "philips.tiff", image)
    write_pyramid_tiff(tmp_path / "generic.tiff", image, 0.25, compression=None)
    with Slide(tmp_path / "philips.tiff", mpp=0.5) as slide:
        assert (slide.vendor, slide.backend) == ("philips", "openslide"), "a vendor TIFF never goes to the decoder"
        with openslide.OpenSlide(str(tmp_path / "philips.tiff")) as reference:
            expected = np.asarray(reference.read_region((0, 0), 0, (768, 512)))[..., :3]
        assert np.array_equal(slide.read(0, 0, 0, 768, 512), expected)
        assert np.array_equal(expected, image)
    with Slide(tmp_path / "generic.tiff") as slide:
        assert (slide.vendor, slide.backend) == ("generic-tiff", "tiffslide")
    with Slide(shared_file("slides", "CMU-1-Small-Region.svs")) as slide:
        assert (slide.vendor, slide.backend) == ("aperio", "tiffslide")


def test_extraction_of_a_dicom_series_names_and_describes_the_slide(tmp_path):
    write_dicom_series(tmp_path / "slides" / "case_A", tissue_image(1024, 768))
    out = tmp_path / "tiles"
    assert tfrecord_generator.main(["--slides", str(tmp_path / "slides"), "--unlabeled", "--output", str(out),
                                    "--magnifications", "20", "5", "--tile-size", "32"]) == 0
    summary = json.loads((out / "case_A.summary.json").read_text())
    assert summary["status"] == "done" and summary["tiles_per_class"]["unlabeled"] > 0
    assert summary["reader"] == {"vendor": "dicom", "backend": "openslide"}
    assert summary["base_mpp"] == pytest.approx(0.5) and Path(summary["slide_path"]).name == "level0.dcm"


def test_a_leica_scn_uses_qupaths_frame_for_its_geojson_in_and_out(tmp_path, monkeypatch, synthetic_slide):
    """QuPath shows a slide with OpenSlide bounds (Leica SCN, the paper's
    scanner) cropped to them, so its coordinates start at the bounds' corner.
    The known regions, drawn in QuPath's frame on the tissue of an SCN placed
    at (512, 256) in its canvas, must label the tiles that the same regions
    label on the plain TIFF of the same tissue; the maps and query squares
    written for QuPath must come back to their cells."""
    bounds = (8 * TILE, 4 * TILE)
    tissue = render(24 * TILE, 16 * TILE, known_regions(), 0)
    scn = tmp_path / "slides" / "scanned.scn"
    write_leica_scn(scn, tissue, bounds, (40 * TILE, 32 * TILE))
    with openslide.OpenSlide(str(scn)) as reference:
        assert reference.properties["openslide.vendor"] == "leica"
        assert (int(reference.properties["openslide.bounds-x"]), int(reference.properties["openslide.bounds-y"])) \
            == bounds
    write_geojson(tmp_path / "annotations" / "scanned.geojson", known_regions())  # QuPath's frame: the tissue's own

    def labelled(output: Path, slide: Path, annotations: Path, origin: tuple[int, int]) -> dict:
        assert tfrecord_generator.main(["--slides", str(slide), "--annotations", str(annotations), "--output",
                                        str(output), "--tile-size", str(TILE), "--quiet"]) == 0
        index = read_index(record_files(output))
        return {(int(x) - origin[0], int(y) - origin[1]): name for x, y, name in zip(index.x, index.y, index.label)}

    plain = labelled(tmp_path / "plain", synthetic_slide[0], synthetic_slide[1].parent, (0, 0))
    scanned = labelled(tmp_path / "scn", scn, tmp_path / "annotations", bounds)
    assert scanned == plain and len(plain) > 100
    summary = json.loads((tmp_path / "scn" / "scanned.summary.json").read_text())
    assert summary["bounds_level0"] == list(bounds)
    # The same polygons taken as full-frame coordinates, as before QuPath's frame was read.
    monkeypatch.setattr(extract, "read_annotations", lambda path, origin=(0, 0): read_annotations(path))
    uncorrected = labelled(tmp_path / "uncorrected", scn, tmp_path / "annotations", bounds)
    monkeypatch.undo()
    agreeing = sum(uncorrected.get(key) == label for key, label in plain.items())
    # Measured: all 155 tiles in QuPath's frame, 12 without the correction.
    assert agreeing < len(plain) / 4, f"{agreeing} of {len(plain)} tiles as on the plain slide without the correction"

    config = load_config(tile_size=TILE)
    # Query squares: in QuPath's frame on the way out, on their own tiles on the way back in.
    index = read_index(record_files(tmp_path / "scn"))
    ids = np.flatnonzero(index.label >= 0)[:5]
    selection = queries.Selection(ids, None, index.label[ids], len(index), "random")
    queries.write_queries(tmp_path / "queries", selection, 1, index, config, {"scanned": float(TILE)},
                          {"scanned": tuple(float(v) for v in summary["bounds_level0"])}, None)
    squares = json.loads((tmp_path / "queries" / "scanned.geojson").read_text())["features"]
    for square, i in zip(squares, ids):
        ring = np.array(square["geometry"]["coordinates"][0])
        centre = (ring.min(axis=0) + ring.max(axis=0)) / 2
        assert tuple(centre) == (index.x[i] - bounds[0], index.y[i] - bounds[1])
        measured = square["properties"]["measurements"]
        assert (measured["centre x (px)"], measured["centre y (px)"]) == tuple(centre)
    back = read_annotations(tmp_path / "queries" / "scanned.geojson", bounds)
    assert [tuple((r.polygons[0].exterior.min(axis=0) + r.polygons[0].exterior.max(axis=0)) / 2) for r in back] == \
        [(index.x[i], index.y[i]) for i in ids]

    model = tmp_path / "model.keras"
    save_model(colour_model(config), model, {"config": config.to_dict(), "backbone": "stub"})
    assert active_learning_inference.main(["--slides", str(scn), "--model", str(model), "--output",
                                           str(tmp_path / "maps"), "--quiet"]) == 0
    folder = tmp_path / "maps" / "scanned"
    saved = np.load(folder / "probabilities.npz", allow_pickle=False)
    classes, (rows, cols) = saved["classes"], saved["classes"].shape
    regions = read_annotations(folder / "tissue_map.geojson", bounds)
    any_rule = load_config(rules=[[".*", "stroma"]])
    names = [*config.class_names, config.undefined["name"]]
    assert regions
    for region in regions:
        cells = rasterize_regions([region], any_rule, (rows * 8, cols * 8), TILE / 8).classes >= 0
        per_cell = cells.reshape(rows, 8, cols, 8).all(axis=(1, 3))
        index = next(i for i, n in enumerate(names) if n.casefold() == region.name.casefold())
        np.testing.assert_array_equal(per_cell, classes == index, err_msg=region.name)
    inside = np.concatenate([p.exterior for r in read_annotations(folder / "tissue_map.geojson") for p in r.polygons])
    assert inside.min() >= 0 and (inside.max(axis=0) <= (24 * TILE, 16 * TILE)).all(), "within QuPath's cropped view"
