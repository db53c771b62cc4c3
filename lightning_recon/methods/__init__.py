"""LightningModules: the training logic of each reconstruction method."""
from .base import ReconstructionModule, write_results_table
from .classical import FBPBaseline, TVBaseline
from .cwgan import ConditionalWGAN
from .learned_iterative import LearnedGD, LearnedPD
from .post_processing import EDIPPretrain, FBPUNet
from .sparse import ISTABaseline, LearnedISTA, SparseRecoveryModule, VolumePanels

__all__ = ["ConditionalWGAN", "EDIPPretrain", "FBPBaseline", "FBPUNet", "ISTABaseline", "LearnedGD", "LearnedISTA", "LearnedPD", "ReconstructionModule",
           "SparseRecoveryModule", "TVBaseline", "VolumePanels", "write_results_table"]
