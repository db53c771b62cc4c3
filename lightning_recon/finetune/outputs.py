"""What ``finetune.py`` writes into ``--out``: the reconstruction (``recon.npy`` / ``recon.tif``, one
image or a ``(slices, H, W)`` stack), ``preview.png`` (FBP | prior | reference), ``loss.png`` and
``summary.json`` with the scores against the reference."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import tifffile
import torch

from ..metrics import psnr, ssim

__all__ = ["PreviewRow", "reference_metrics", "save_image", "save_loss_plot", "save_preview", "save_stack",
           "write_atomically", "write_summary"]

# One row of the preview: (title prefix, FBP, reconstruction, reference or None), images (H, W).
PreviewRow = Tuple[str, np.ndarray, np.ndarray, Optional[np.ndarray]]


def reference_metrics(image: torch.Tensor, fbp: torch.Tensor, reference: Optional[torch.Tensor]) -> dict:
    """``recon_psnr``, ``recon_ssim`` (of the returned image), ``fbp_psnr``, ``fbp_ssim`` against
    ``reference`` (its own data range); {} without one."""
    scores = {}
    if reference is not None:
        ref = reference[None, None]
        data_range = float(ref.max() - ref.min())
        for name, panel in (("recon", image), ("fbp", fbp)):
            scores[f"{name}_psnr"] = float(psnr(panel[None, None], ref, data_range))
            scores[f"{name}_ssim"] = float(ssim(panel[None, None], ref, data_range))
    return scores


def write_atomically(path: Path, write: Callable) -> None:
    """``write(file)`` into a temporary file, then renamed over ``path``: an interrupt or error never
    leaves half a file, and the previous ``path`` stays until the new one is complete."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def save_image(out: Path, image: torch.Tensor) -> None:
    """recon.npy / recon.tif: one reconstructed image ``(H, W)``, each written atomically."""
    array = image.numpy().astype(np.float32)
    write_atomically(out / "recon.npy", lambda f: np.save(f, array))
    write_atomically(out / "recon.tif", lambda f: tifffile.imwrite(f, array))


def save_stack(out: Path, slice_files: Sequence[Path], image_shape) -> None:
    """recon.npy / recon.tif: the images in ``slice_files`` as one (slices, H, W) stack, assembled
    slice by slice in a temporary file and renamed into place only when every slice is in: an
    unreadable slice (ValueError naming it) leaves the previous stack as it was."""
    assembled = out / "recon.npy.tmp"
    stack = np.lib.format.open_memmap(assembled, mode="w+", dtype=np.float32, shape=(len(slice_files), *image_shape))
    try:
        for position, path in enumerate(slice_files):
            try:
                stack[position] = np.load(path)
            except (OSError, ValueError, EOFError) as error:
                raise ValueError(f"{path} is unreadable ({type(error).__name__}); {out / 'recon.npy'} is left as "
                                 "it was") from None
        stack.flush()
        write_atomically(out / "recon.tif", lambda f: tifffile.imwrite(f, stack, bigtiff=stack.nbytes > 2**31,
                                                                       photometric="minisblack"))
    except BaseException:
        del stack
        assembled.unlink(missing_ok=True)
        raise
    del stack
    os.replace(assembled, out / "recon.npy")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_preview(out: Path, rows: List[PreviewRow], label: str, inches: float, **title_font) -> None:
    """preview.png: FBP | ``label`` (| reference) per row, ``inches`` a panel, each row in the window
    [0, 99.5th percentile of its reference, else of its reconstruction]."""
    plt = _pyplot()
    columns = 3 if rows[0][3] is not None else 2
    fig, axes = plt.subplots(len(rows), columns, figsize=(inches * columns, inches * len(rows)), squeeze=False)
    for row_axes, (prefix, fbp, image, reference) in zip(axes, rows):
        panels = [("FBP", fbp), (label, image)] + ([("reference", reference)] if reference is not None else [])
        high = float(np.percentile(reference if reference is not None else image, 99.5))
        for ax, (name, panel) in zip(row_axes, panels):
            ax.imshow(panel.T, origin="lower", cmap="gray", vmin=0, vmax=high)
            ax.set_title(prefix + name, **title_font)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "preview.png", dpi=80)
    plt.close(fig)


def save_loss_plot(out: Path, losses: Sequence[float]) -> None:
    """loss.png: the loss of every iteration, log scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(losses)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=80)
    plt.close(fig)


def write_summary(out: Path, summary: dict) -> None:
    """summary.json."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
