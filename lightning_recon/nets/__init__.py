"""Plain ``nn.Module`` architectures (no Lightning); operators come in as arguments."""
from .critic import ConditionalCritic
from .deep_decoder import DeepDecoder
from .generative import ImageDecoder, ImageEncoder
from .generator import ConditionalGenerator
from .lista import LISTA
from .unet import UNet
from .unrolled import LearnedGradientDescent, LearnedPrimalDual

__all__ = ["ConditionalCritic", "DeepDecoder", "ImageDecoder", "ImageEncoder", "ConditionalGenerator", "LISTA", "LearnedGradientDescent", "LearnedPrimalDual", "UNet"]
