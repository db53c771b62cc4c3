"""Plain ``nn.Module`` architectures (no Lightning); operators come in as arguments."""
from .critic import ConditionalCritic
from .unet import UNet
from .unrolled import LearnedGradientDescent, LearnedPrimalDual

__all__ = ["ConditionalCritic", "LearnedGradientDescent", "LearnedPrimalDual", "UNet"]
