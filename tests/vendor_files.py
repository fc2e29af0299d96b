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


def write_leica_scn(path: Path, tissue: np.ndarray, offset: tuple[int, int], canvas: tuple[int, int],
                    mpp: float = 0.25) -> None:
    """A Leica SCN as the SCN400 writes it: one BigTIFF whose first directory
    is the macro image of the whole slide, carrying the XML description of the
    collection, then the main image (``tissue``, two levels) placed at
    ``offset`` level-0 px inside a ``canvas`` (width, height) in px. Sizes and
    offsets in the XML are in nanometres, as the scanner writes them; OpenSlide
    puts the main image at ``offset`` and reports it as ``openslide.bounds-*``."""
    nm = mpp * 1000
    height, width = tissue.shape[:2]
    macro = np.full((canvas[1] // 16, canvas[0] // 16, 3), 235, np.uint8)

    def image(name: str, pixels: str, view: tuple[float, float, float, float], objective: str) -> str:
        return (f'<image name="{name}"><creationDate>2026-01-01T00:00:00.00Z</creationDate>'
                f'<device model="Leica SCN400;Leica SCN" version="1.5.1.10864 2012/05/10 13:29:07;1.5.1.10864"/>'
                f'<pixels sizeX="{pixels[0]}" sizeY="{pixels[1]}">{pixels[2]}</pixels>'
                f'<view sizeX="{view[0]:.0f}" sizeY="{view[1]:.0f}" offsetX="{view[2]:.0f}" offsetY="{view[3]:.0f}" '
                f'spacingZ="0"/><scanSettings><objectiveSettings><objective>{objective}</objective>'
                f'</objectiveSettings><illuminationSettings><numericalAperture>0.7</numericalAperture>'
                f'<illuminationSource>brightfield</illuminationSource></illuminationSettings></scanSettings></image>')

    macro_dims = f'<dimension sizeX="{macro.shape[1]}" sizeY="{macro.shape[0]}" r="0" ifd="0"/>'
    main_dims = (f'<dimension sizeX="{width}" sizeY="{height}" r="0" ifd="1"/>'
                 f'<dimension sizeX="{width // 4}" sizeY="{height // 4}" r="1" ifd="2"/>')
    collection_nm = (canvas[0] * nm, canvas[1] * nm)
    description = (
        '<?xml version="1.0"?>\n<scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01">'
        f'<collection name="synthetic" uuid="00000000-0000-0000-0000-000000000000" sizeX="{collection_nm[0]:.0f}" '
        f'sizeY="{collection_nm[1]:.0f}"><barcode>U0NO</barcode>'
        + image("macro", (macro.shape[1], macro.shape[0], macro_dims), (*collection_nm, 0, 0), "5")
        + image("main", (width, height, main_dims), (width * nm, height * nm, offset[0] * nm, offset[1] * nm), "20")
        + "</collection></scn>")
    path.parent.mkdir(parents=True, exist_ok=True)
    resolution = (1e4 / mpp, 1e4 / mpp)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(macro, tile=(16, 16), photometric="rgb", description=description, metadata=None,
                  resolution=(resolution[0] / 16, resolution[1] / 16), resolutionunit="CENTIMETER")
        tif.write(tissue, tile=(256, 256), photometric="rgb", metadata=None, compression="jpeg",
                  resolution=resolution, resolutionunit="CENTIMETER")
        tif.write(np.ascontiguousarray(tissue[::4, ::4]), tile=(256, 256), photometric="rgb", metadata=None,
                  compression="jpeg", resolution=(resolution[0] / 4, resolution[1] / 4), resolutionunit="CENTIMETER")
