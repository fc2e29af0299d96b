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

import tfrecord_generator
from tests.conftest import shared_file
from tests.vendor_files import write_dicom_instance, write_dicom_series, write_philips_tiff
from utils.slide import Slide
from utils.slide_files import find_slides
from utils.synthetic import SOURCE_STAIN, random_layout, render, write_pyramid_tiff


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
