"""LightningModules: the training logic of each reconstruction method."""
from .base import ReconstructionModule, write_results_table
from .learned_iterative import LearnedGD, LearnedPD
from .post_processing import FBPUNet

__all__ = ["FBPUNet", "LearnedGD", "LearnedPD", "ReconstructionModule", "write_results_table"]
