"""Reconstruction with a trained generative prior as regulariser (Duff, Campbell & Ehrhardt,
arXiv 2107.11191), "range" or "soft", for any operator: the objectives, the optimisation and the
units of μ and λ are in :mod:`lightning_recon.solvers.generative`; the priors are trained by
:mod:`lightning_recon.methods.generative_priors`.

- :func:`load_prior`: the generator (and encoder) of a ``VAEPrior``/``GANPrior`` checkpoint, read
  with ``weights_only=True``.
- :class:`GenerativeRegulariser`: reconstructs every test batch by optimisation, batched over the
  batch and the restarts (restart 0 at the encoder's mean of the FBP when the prior has an encoder
  and ``encoder_init``); ``tune=True`` picks μ (range) or λ (soft) by validation PSNR, as
  ``TVBaseline`` picks α.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from lightning.pytorch.utilities import rank_zero_info

from ..checkpointing import upgrade_hyperparameters
from ..metrics import psnr
from ..nets.latent_decoder import ImageDecoder, ImageEncoder
from ..solvers.generative import check_settings, generative_reconstruction
from .base import ReconstructionModule, TunedOnValidation
from .generative_priors import encoded_fbp

__all__ = ["GenerativeRegulariser", "load_prior"]


def load_prior(path: str) -> Tuple[ImageDecoder, Optional[ImageEncoder], Dict[str, Any]]:
    """Generator (and encoder, for a VAE) of a ``VAEPrior``/``GANPrior`` checkpoint, read with
    ``weights_only=True`` and built from the checkpoint's hyperparameters; also the hyperparameters
    with ``kind`` (``"VAE"`` or ``"GAN"``) added. Modules on the CPU, in evaluation mode, frozen."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"prior_checkpoint {path!r} not found: train a prior first "
                         "(configs/experiment/ellipses_small_vae_prior_cpu.yaml)")
    try:
        checkpoint = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as error:
        raise ValueError(f"prior_checkpoint {path!r} is not a readable checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from error
    hparams = dict(checkpoint.get("hyper_parameters") or {}) if isinstance(checkpoint, dict) else {}
    hparams = upgrade_hyperparameters(hparams)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not state or not any(key.startswith("generator.") for key in state) or "latent_dim" not in hparams:
        raise ValueError(f"prior_checkpoint {path!r} holds no generative prior (a VAEPrior or GANPrior checkpoint "
                         "with generator weights and latent_dim)")
    image_shape = tuple(hparams["forward_model"]["image_shape"])
    generator = ImageDecoder(int(hparams["latent_dim"]), image_shape, tuple(hparams["generator_channels"]))
    generator.load_state_dict({k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")})
    encoder = None
    if any(key.startswith("encoder.") for key in state):
        channels = hparams.get("encoder_channels") or tuple(hparams["generator_channels"])[::-1]
        encoder = ImageEncoder(int(hparams["latent_dim"]), image_shape, tuple(channels))
        encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    for module in (generator, encoder):
        if module is not None:
            module.eval().requires_grad_(False)
    hparams["kind"] = "VAE" if encoder is not None else "GAN"
    return generator, encoder, hparams


class GenerativeRegulariser(TunedOnValidation, ReconstructionModule):
    """Reconstruction with a trained generative prior as regulariser, "range" or "soft", for the data
    module's operator, whatever it is: the generator is the one of ``prior_checkpoint``, unchanged.

    Nothing to train: run it with ``train.py test``. Each test batch is reconstructed by
    :func:`generative_reconstruction` (batched over the measurements and ``restarts``). With
    ``tune=True`` it first picks μ (range) from ``mus`` or λ (soft) from ``lams`` by mean PSNR on
    the first ``tune_samples`` validation samples, and records the choice in its hyperparameters.

    Args:
        prior_checkpoint: a ``VAEPrior`` or ``GANPrior`` checkpoint (read with ``weights_only=True``);
            its image size must be the geometry's, its geometry need not be. Read at construction
            when it exists, else at ``setup`` (``attach_prior``).
        mode: ``"range"`` or ``"soft"``.
        mu, lam: μ and λ of the objective (:mod:`lightning_recon.solvers.generative`; ``lam`` only for soft).
        iterations, restarts, lr, cg_iterations, nonnegative, seed: see :func:`generative_reconstruction`.
        encoder_init: restart 0 starts at the encoder's mean of the FBP (VAE priors; else ``z = 0``).
        tune, mus, lams, tune_samples: the validation tuning.
        method_name: the results-table row (default ``"<VAE|GAN> <mode>"``).
        **kwargs: forward_model and the other settings of :class:`ReconstructionModule`.
    """

    def __init__(self, prior_checkpoint: str, mode: str = "soft", mu: float = 0.003, lam: float = 10.0,
                 iterations: int = 200, restarts: int = 2, lr: float = 0.05, cg_iterations: int = 5,
                 nonnegative: bool = True, encoder_init: bool = True, seed: int = 0, tune: bool = False,
                 mus: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0),
                 lams: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0), tune_samples: int = 8,
                 method_name: Optional[str] = None, **kwargs):
        check_settings(mode, mu, lam if mode == "soft" else 1.0, iterations, restarts, lr, cg_iterations)
        grid = mus if mode == "range" else lams
        if tune and (not grid or any(not (isinstance(v, (int, float)) and v > 0) for v in grid)):
            raise ValueError(f"{'mus' if mode == 'range' else 'lams'} must be a non-empty list of positive "
                             f"numbers to tune, got {list(grid)}")
        if tune_samples < 1:
            raise ValueError(f"tune_samples must be >= 1, got {tune_samples}")
        super().__init__(method_name=method_name, **kwargs)
        self.generator: Optional[ImageDecoder] = None
        self.encoder: Optional[ImageEncoder] = None
        self.prior_kind: Optional[str] = None
        if Path(prior_checkpoint).expanduser().is_file():
            self.attach_prior()

    def attach_prior(self) -> None:
        """Load generator (and encoder) from ``prior_checkpoint`` if not done yet: at construction
        when the file exists, else at ``setup`` (so that configs naming a prior still to be trained
        parse and instantiate); a missing or wrong file is a ``ValueError`` naming it."""
        if self.generator is not None:
            return
        generator, encoder, prior_hparams = load_prior(self.hparams.prior_checkpoint)
        if tuple(self.operator.domain_shape) != (1, *generator.image_shape):
            raise ValueError(f"the prior generates images {generator.image_shape[0]}x{generator.image_shape[1]}, "
                             f"the geometry reconstructs {tuple(self.operator.domain_shape)[1:]}: use a prior "
                             "trained at this image size")
        self.generator, self.encoder = generator.to(self.device), encoder.to(self.device) if encoder else None
        self.prior_kind = prior_hparams["kind"]
        if not self.hparams.get("method_name"):
            self.hparams.update(method_name=f"{self.prior_kind} {self.hparams.mode}")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.attach_prior()

    def reconstruct(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.solve(batch)["x"]

    def solve(self, batch: Dict[str, torch.Tensor], **overrides: Any) -> Dict[str, torch.Tensor]:
        """:func:`generative_reconstruction` of ``batch["measurement"]`` with the module's settings
        (``overrides`` replace some, e.g. ``mu`` while tuning)."""
        self.attach_prior()
        hp = self.hparams
        settings = dict(mode=hp.mode, mu=hp.mu, lam=hp.lam, iterations=hp.iterations, restarts=hp.restarts, lr=hp.lr,
                        cg_iterations=hp.cg_iterations, nonnegative=hp.nonnegative, seed=hp.seed)
        settings.update(overrides)
        z_init = encoded_fbp(self.encoder, batch) if self.encoder is not None and hp.encoder_init else None
        return generative_reconstruction(self.generator, self.operator, batch["measurement"], z_init=z_init,
                                         **settings)

    def training_step(self, batch, batch_idx):
        raise RuntimeError("GenerativeRegulariser has nothing to train: run `train.py test`; train the prior "
                           "with VAEPrior or GANPrior")

    def configure_optimizers(self):
        raise RuntimeError("GenerativeRegulariser has nothing to train: run `train.py test`; train the prior "
                           "with VAEPrior or GANPrior")

    def build_before_test(self) -> None:
        with torch.no_grad():  # build the operator before the timed steps (the base runs a whole reconstruction)
            self.operator(torch.zeros(1, *self.operator.domain_shape, device=self.device))

    def tune_on(self, measurement: torch.Tensor, truth: torch.Tensor) -> Dict[float, float]:
        """Pick μ (range) or λ (soft) from the grid by mean PSNR on these samples; returns the scores."""
        name, grid = ("mu", self.hparams.mus) if self.hparams.mode == "range" else ("lam", self.hparams.lams)
        batch = self.measurement_batch(measurement)
        scores = {}
        for value in grid:
            pred = self.solve(batch, **{name: float(value)})["x"]
            scores[float(value)] = float(psnr(pred, truth).mean())
        best = max(scores, key=scores.get)
        self.hparams.update({name: best})
        rank_zero_info(f"{self.method_name} tuned on {len(truth)} validation samples: {name} {best:g} "
                       f"({', '.join(f'{v:g}: {s:.2f} dB' for v, s in scores.items())})")
        return scores
