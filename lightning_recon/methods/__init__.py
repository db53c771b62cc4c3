"""LightningModules: the training logic of each reconstruction method."""
from .base import ReconstructionModule, write_results_table
from .classical import FBPBaseline, TVBaseline
from .cwgan import ConditionalWGAN
from .learned_iterative import LearnedGD, LearnedPD
from .post_processing import EDIPPretrain, FBPUNet

__all__ = ["ConditionalWGAN", "EDIPPretrain", "FBPBaseline", "FBPUNet", "LearnedGD", "LearnedPD", "ReconstructionModule",
           "TVBaseline", "write_results_table"]
