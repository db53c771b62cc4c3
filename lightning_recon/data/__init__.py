"""Datasets and DataModules (imports physics only)."""
from .datamodule import PRESETS, SimulatedCTDataModule
from .simulated import EllipsesDataset, noise_model
from .sparse import LightFieldDataModule, NeuronVolumeDataset, SparseCodingDataModule, SparseCodingDataset

__all__ = ["PRESETS", "EllipsesDataset", "LightFieldDataModule", "NeuronVolumeDataset", "SimulatedCTDataModule",
           "SparseCodingDataModule", "SparseCodingDataset", "noise_model"]
