"""Slide files as other vendors' software writes them, made with independent
libraries: DICOM whole-slide series (pydicom) and Philips TIFF (tifffile).
OpenSlide reads both; the tests compare what the tool reads with the pixels
written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage


def write_dicom_instance(path: Path, image: np.ndarray, image_type: str, series: str, study: str, frame: str,
                         mpp: float, tile: int = 64) -> None:
    """One instance of a series: a TILED_FULL, uncompressed RGB image."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    height, width = image.shape[:2]
    frames = []
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            frame_pixels = np.full((tile, tile, 3), 255, np.uint8)
            part = image[top : top + tile, left : left + tile]
            frame_pixels[: part.shape[0], : part.shape[1]] = part
            frames.append(frame_pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = WSI_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = WSI_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.Modality = "SM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", image_type, "NONE"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows = ds.Columns = tile
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = len(frames)
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.InstanceNumber = 1
    ds.ContainerIdentifier = "slide"
    ds.SpecimenDescriptionSequence = Sequence()
    ds.NumberOfOpticalPaths = 1
    optical_path = Dataset()
    optical_path.OpticalPathIdentifier = "1"
    ds.OpticalPathSequence = Sequence([optical_path])
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = width * mpp / 1000, height * mpp / 1000, 0.001
    measures = Dataset()
    measures.PixelSpacing = [mpp / 1000, mpp / 1000]
    measures.SliceThickness = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PixelData = np.stack(frames).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_dicom_series(folder: Path, image: np.ndarray, mpp: float = 0.5, prefix: str = "") -> str:
    """A two-level pyramid with a label and an overview image, as four files;
    returns the SeriesInstanceUID."""
    from pydicom.uid import generate_uid

    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    write_dicom_instance(folder / f"{prefix}level0.dcm", image, "VOLUME", series, study, frame, mpp)
    write_dicom_instance(folder / f"{prefix}level1.dcm", image[::2, ::2].copy(), "VOLUME", series, study, frame,
                         2 * mpp)
    write_dicom_instance(folder / f"{prefix}label.dcm", image[:64, :96].copy(), "LABEL", series, study, frame, mpp)
    write_dicom_instance(folder / f"{prefix}overview.dcm", image[::4, ::4].copy(), "OVERVIEW", series, study, frame,
                         4 * mpp)
    return series


def _philips_level(number: int, spacing_mm: float) -> str:
    return ('<DataObject ObjectType="PixelDataRepresentation">'
            f'<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_NUMBER" Group="0x1001" Element="0x8B" '
            f'PMSVR="IUInt32">{number}</Attribute>'
            f'<Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" PMSVR="IDoubleArray">'
            f'&quot;{spacing_mm}&quot; &quot;{spacing_mm}&quot;</Attribute></DataObject>')


def write_philips_tiff(path: Path, image: np.ndarray, mpp: float = 0.5) -> None:
    """A two-level Philips TIFF export (Software "Philips", DPUfsImport XML)."""
    levels = _philips_level(0, mpp / 1000) + _philips_level(1, 2 * mpp / 1000)
    description = (
        '<?xml version="1.0" encoding="UTF-8" ?>\n<DataObject ObjectType="DPUfsImport">'
        '<Attribute Name="PIM_DP_SCANNED_IMAGES" Group="0x301D" Element="0x1003" PMSVR="IDataObjectArray"><Array>'
        '<DataObject ObjectType="DPScannedImage">'
        '<Attribute Name="PIM_DP_IMAGE_TYPE" Group="0x301D" Element="0x1004" PMSVR="IString">WSI</Attribute>'
        '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" Group="0x1001" Element="0x8003" '
        f'PMSVR="IDataObjectArray"><Array>{levels}</Array></Attribute>'
        '</DataObject></Array></Attribute></DataObject>\n')
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(256, 256), photometric="rgb", description=description, software="Philips DP v1.0",
                  metadata=None)
        tif.write(image[::2, ::2].copy(), tile=(256, 256), photometric="rgb", description="level=1",
                  software="Philips DP v1.0", metadata=None, subfiletype=1)
