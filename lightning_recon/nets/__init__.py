"""Plain ``nn.Module`` architectures (no Lightning); operators come in as arguments."""
from .conditional_generator import ConditionalGenerator
from .critic import ConvCritic
from .deep_decoder import DeepDecoder
from .denoisers import DRUNet, LiftingDenoiser, LiftingScheme
from .latent_decoder import ImageDecoder, ImageEncoder
from .lista import LISTA
from .unet import UNet
from .unrolled import LearnedGradientDescent, LearnedPrimalDual

__all__ = ["ConditionalGenerator", "ConvCritic", "DRUNet", "DeepDecoder", "ImageDecoder", "ImageEncoder", "LISTA",
           "LearnedGradientDescent", "LearnedPrimalDual", "LiftingDenoiser", "LiftingScheme", "UNet"]
