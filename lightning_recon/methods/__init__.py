"""LightningModules: the training logic of each reconstruction method, all on one base
(:class:`ReconstructionModule`)."""
from .analytic_deep_prior import AnalyticDeepPrior
from .base import ReconstructionModule, read_results_table, write_results_table
from .classical import FBPBaseline, TVBaseline
from .cwgan import ConditionalWGAN
from .generative import GANPrior, GenerativeRegulariser, VAEPrior
from .learned_iterative import LearnedGD, LearnedPD
from .post_processing import EDIPPretrain, FBPUNet
from .callbacks import VolumePanels
from .dip import DeepImagePrior
from .sparse import ISTABaseline, LearnedISTA, SparseRecoveryModule

__all__ = ["AnalyticDeepPrior", "ConditionalWGAN", "DeepImagePrior", "EDIPPretrain", "FBPBaseline", "FBPUNet", "GANPrior", "GenerativeRegulariser", "ISTABaseline", "LearnedGD", "LearnedISTA", "LearnedPD", "ReconstructionModule", "read_results_table",
           "SparseRecoveryModule", "TVBaseline", "VAEPrior", "VolumePanels", "write_results_table"]
