"""Datasets and DataModules (imports physics only)."""
from .datamodule import PRESETS, SimulatedCTDataModule
from .simulated import EllipsesDataset, noise_model

__all__ = ["PRESETS", "EllipsesDataset", "SimulatedCTDataModule", "noise_model"]
