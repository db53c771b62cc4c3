"""LightningModules: the training logic of each reconstruction method, all on one base
(:class:`ReconstructionModule`); the iterative solvers they run are in :mod:`lightning_recon.solvers`."""
from .analytic_deep_prior import AnalyticDeepPrior
from .base import ReconstructionModule
from .classical import FBPBaseline, TVBaseline
from .cwgan import ConditionalWGAN
from .generative_priors import GANPrior, VAEPrior
from .generative_regulariser import GenerativeRegulariser
from .learned_iterative import LearnedGD, LearnedPD
from .post_processing import EDIPPretrain, FBPUNet
from .callbacks import VolumePanels
from .dip import DeepImagePrior
from .sparse import ISTABaseline, LearnedISTA, SparseRecoveryModule

__all__ = ["AnalyticDeepPrior", "ConditionalWGAN", "DeepImagePrior", "EDIPPretrain", "FBPBaseline", "FBPUNet", "GANPrior",
           "GenerativeRegulariser", "ISTABaseline", "LearnedGD", "LearnedISTA", "LearnedPD", "ReconstructionModule",
           "SparseRecoveryModule", "TVBaseline", "VAEPrior", "VolumePanels"]
