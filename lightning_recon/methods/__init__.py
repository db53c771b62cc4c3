"""LightningModules: the training logic of each reconstruction method, all on one base
(:class:`ReconstructionModule`); the iterative solvers they run are in :mod:`lightning_recon.solvers`."""
from .analytic_deep_prior import AnalyticDeepPrior
from .base import ReconstructionModule
from .classical import FBPBaseline, TVBaseline
from .cwgan import ConditionalWGAN
from .denoiser import DenoiserModule
from .generative_priors import GANPrior, VAEPrior
from .generative_regulariser import GenerativeRegulariser
from .learned_iterative import LearnedGD, LearnedPD
from .plug_and_play import PlugAndPlay, UnfoldedHQS
from .post_processing import EDIPPretrain, FBPUNet
from .self_supervised import LearnedReconstructionModule
from .callbacks import VolumePanels
from .dip import DeepImagePrior
from .sparse import ISTABaseline, LearnedISTA, SparseRecoveryModule

__all__ = ["AnalyticDeepPrior", "ConditionalWGAN", "DeepImagePrior", "DenoiserModule", "EDIPPretrain", "FBPBaseline",
           "FBPUNet", "GANPrior", "GenerativeRegulariser", "ISTABaseline", "LearnedGD", "LearnedISTA", "LearnedPD",
           "LearnedReconstructionModule",
           "PlugAndPlay", "ReconstructionModule", "SparseRecoveryModule", "TVBaseline", "UnfoldedHQS", "VAEPrior",
           "VolumePanels"]
