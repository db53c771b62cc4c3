"""Plain ``nn.Module`` architectures (no Lightning); operators come in as arguments."""
from .critic import ConditionalCritic
from .generator import ConditionalGenerator
from .lista import LISTA
from .unet import UNet
from .unrolled import LearnedGradientDescent, LearnedPrimalDual

__all__ = ["ConditionalCritic", "ConditionalGenerator", "LISTA", "LearnedGradientDescent", "LearnedPrimalDual", "UNet"]
