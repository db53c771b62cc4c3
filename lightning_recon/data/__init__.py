"""Datasets and DataModules (imports physics only): simulated ellipses, LoDoPaB-CT, your own images
and measured pairs, measurements alone (predict), the slices of one raw scan, light field and sparse
coding. The batch contract is in docs/data.md."""
from .datamodule import PRESETS, SimulatedCTDataModule, SplitDataModule, WithoutGroundTruth
from .files import DataFileError
from .images import ImageDataModule, ImageFileDataset
from .lodopab import LoDoPaBDataModule, LoDoPaBDataset, lodopab_geometry
from .measurements import MeasurementFilesDataset, MeasurementsDataModule
from .pairs import MeasuredPairsDataModule, MeasuredPairsDataset
from .scan import ScanSlicesDataModule, ScanSlicesDataset
from .simulated import EllipsesDataset, noise_model
from .sparse import LightFieldDataModule, NeuronVolumeDataset, SparseCodingDataModule, SparseCodingDataset

__all__ = ["PRESETS", "DataFileError", "EllipsesDataset", "ImageDataModule", "ImageFileDataset", "LightFieldDataModule",
           "LoDoPaBDataModule", "LoDoPaBDataset", "MeasuredPairsDataModule",
           "MeasurementFilesDataset", "MeasurementsDataModule", "MeasuredPairsDataset",
           "NeuronVolumeDataset", "ScanSlicesDataModule", "ScanSlicesDataset", "SimulatedCTDataModule",
           "SparseCodingDataModule", "SparseCodingDataset",
           "SplitDataModule", "WithoutGroundTruth", "lodopab_geometry", "noise_model"]
