"""Preprocessing parity fixtures: what torchvision's ImageNet transform
(Resize(shorter side) then CenterCrop, on a PIL image, bilinear) makes of a few
images, so that tests/preprocess.rs can check advex's resize and crop without
Python.

Sources are crops of the bundled photos (examples/photos) at sizes that hit the
awkward cases: a longer side whose exact size has a fraction >= .5 (torchvision
truncates it), odd crop margins (torchvision rounds half to even), portrait and
landscape, down- and upscaling. The geometry follows torchvision 0.29:
  transforms.functional._compute_resized_output_size (int() of the longer side)
  transforms.functional.center_crop (int(round((size - crop) / 2.0)))
and the resampling is PIL's Image.resize(..., filter) (antialiased), which is
what torchvision calls for PIL images; bilinear (torchvision's default) on every
source, then bicubic, Lanczos and nearest on two of them.

  python tools/make_fixtures_resize.py   # writes tests/fixtures/resize/
"""
import json
import os

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(ROOT, "examples", "photos")
OUT = os.path.join(ROOT, "tests", "fixtures", "resize")

RESIZE, CROP = 64, 56
# (photo, left, top, width, height, filter)
SOURCES = [
    ("chelsea.png", 30, 60, 150, 101),
    ("coffee.png", 20, 10, 99, 177),
    ("astronaut.png", 10, 40, 200, 131),
    ("rocket.png", 0, 0, 224, 224),
    ("retina.png", 90, 70, 40, 52),
]
FILTERS = {
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "nearest": Image.NEAREST,
}
CASES = [s + ("bilinear",) for s in SOURCES] + [
    SOURCES[i] + (f,) for f in ("bicubic", "lanczos", "nearest") for i in (0, 4)
]


def resized_size(w, h, size):
    # torchvision _compute_resized_output_size for an int size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def center_crop(img, crop):
    w, h = img.size
    top = int(round((h - crop) / 2.0))
    left = int(round((w - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def main():
    os.makedirs(OUT, exist_ok=True)
    index = []
    for i, (photo, left, top, w, h, filt) in enumerate(CASES):
        src = Image.open(os.path.join(PHOTOS, photo)).convert("RGB")
        src = src.crop((left, top, left + w, top + h))
        name = f"src_{SOURCES.index((photo, left, top, w, h))}_{w}x{h}.png"
        src.save(os.path.join(OUT, name))
        nw, nh = resized_size(w, h, RESIZE)
        out = center_crop(src.resize((nw, nh), FILTERS[filt]), CROP)
        want = f"want_{i}.png" if filt == "bilinear" else f"want_{i}_{filt}.png"
        out.save(os.path.join(OUT, want))
        index.append({"source": name, "expected": want, "resized": [nw, nh], "interpolation": filt})
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"resize": RESIZE, "crop": CROP, "cases": index}, f, indent=1)
        f.write("\n")
    print(f"wrote {len(index)} cases to {OUT}")


if __name__ == "__main__":
    main()
