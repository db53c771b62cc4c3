"""Write a folder of 8-bit PNG phantoms, the made image folder of docs/results.md ("Your own images").

    python bench/make_image_folder.py data/images-adler64 --count 1200 --size 64

Adler & Öktem's ellipse family (50 ellipses, whole image min-max normalised) inside the inscribed
disk, rasterised at ``size``², quantised to 8 bits: a distribution the project never trains on
through its simulators, read back through ``ImageDataModule`` as any user's folder would be.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from lightning_recon.physics.phantoms import ellipse_parameters, ellipse_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=1200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    params = ellipse_parameters(args.seed, args.count, "adler")
    centre = (np.arange(args.size) - (args.size - 1) / 2) / (args.size / 2)
    disk = centre[:, None] ** 2 + centre[None, :] ** 2 <= 1.0
    for i in range(args.count):
        image = ellipse_phantom(params[i], (args.size, args.size), None, "adler") * disk
        Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(args.out / f"phantom{i:05d}.png")
    print(f"wrote {args.count} PNG images of {args.size}² to {args.out}")


if __name__ == "__main__":
    main()
