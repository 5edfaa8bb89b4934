"""Re-creates the example photos and their edit masks in this folder from scikit-image's sample data.

The photos ship inside the scikit-image wheel (``skimage/data/``) and are public domain / CC0 (see
``examples/README.md``). Each is cropped to a square around its subject and resized to 512x512; the masks are
drawn by hand as ellipses and polygons over the objects (coordinates in the 512x512 frame) and saved as binary
PNGs (0 = keep, 255 = edit).

    python examples/make_examples.py            # refuses to replace existing files
    python examples/make_examples.py --overwrite
    python examples/make_examples.py --preview DIR  # also writes DIR/<photo>.png: the masks tinted on the photos
"""

from __future__ import annotations

import argparse
import os
import sys

from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 512

# name -> (scikit-image loader, crop box (left, top, right, bottom) in the original photo)
PHOTOS = {
    "chelsea": ("chelsea", (60, 0, 360, 300)),
    "coffee": ("coffee", (80, 0, 480, 400)),
    "astronaut": ("astronaut", (0, 0, 512, 512)),
    "rocket": ("rocket", (106, 0, 533, 427)),
}

# mask file stem -> list of shapes drawn in order; a shape is ("ellipse", box) or ("polygon", points), and
# ("cut-ellipse", box) / ("cut-polygon", points) remove that shape from what was drawn before it.
MASKS = {
    "chelsea_cat": [
        ("polygon", [(0, 0), (450, 0), (470, 20), (490, 110), (512, 150), (512, 290), (470, 320), (440, 380),
                     (420, 440), (400, 512), (0, 512)]),
    ],
    "coffee_coffee": [("ellipse", (156, 118, 378, 226))],
    "coffee_spoon": [
        ("polygon", [(418, 86), (440, 96), (412, 200), (398, 300), (384, 304), (392, 196)]),
        ("ellipse", (312, 300, 420, 416)),
    ],
    "coffee_table": [
        ("polygon", [(0, 0), (512, 0), (512, 512), (0, 512)]),
        ("cut-ellipse", (-6, 84, 508, 500)),  # the saucer
        ("cut-ellipse", (114, 18, 426, 270)),  # the cup's rim
        ("cut-polygon", [(414, 80), (446, 92), (420, 200), (400, 200)]),  # the spoon's handle
    ],
    "astronaut_helmet": [("ellipse", (274, 338, 536, 560))],
    "astronaut_shuttle": [
        ("polygon", [(392, 0), (442, 0), (458, 100), (462, 200), (472, 272), (444, 292), (368, 290), (352, 222),
                     (378, 120), (384, 50)]),
    ],
    "rocket_rocket": [
        ("polygon", [(259, 146), (247, 170), (242, 300), (240, 488), (280, 488), (278, 300), (274, 170)]),
    ],
    "rocket_towers": [
        ("polygon", [(104, 144), (120, 144), (124, 230), (136, 470), (128, 512), (70, 512), (80, 470), (100, 230)]),
        ("polygon", [(402, 144), (416, 144), (420, 230), (446, 470), (450, 512), (392, 512), (396, 470), (400, 230)]),
    ],
}


def load_photo(name: str) -> Image.Image:
    import skimage.data

    loader, box = PHOTOS[name]
    photo = Image.fromarray(getattr(skimage.data, loader)()).convert("RGB")
    return photo.crop(box).resize((SIZE, SIZE), Image.LANCZOS)


def draw_mask(shapes) -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(mask)
    for kind, geometry in shapes:
        if kind == "ellipse":
            draw.ellipse(geometry, fill=255)
        elif kind == "polygon":
            draw.polygon(geometry, fill=255)
        elif kind == "cut-ellipse":
            draw.ellipse(geometry, fill=0)
        elif kind == "cut-polygon":
            draw.polygon(geometry, fill=0)
        else:
            raise ValueError(f"unknown shape {kind!r}")
    return mask


def preview(photo: Image.Image, masks: list[Image.Image]) -> Image.Image:
    """The photo with each mask tinted in its own colour."""
    colours = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48)]
    out = photo.convert("RGB")
    for mask, colour in zip(masks, colours):
        tinted = Image.blend(out, Image.new("RGB", out.size, colour), 0.45)
        out = Image.composite(tinted, out, mask)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overwrite", action="store_true", help="replace existing images and masks")
    parser.add_argument("--preview", metavar="DIR", help="also write the masks tinted on the photos to DIR")
    args = parser.parse_args(argv)

    outputs = {os.path.join(HERE, "images", f"{name}.png"): ("photo", name) for name in PHOTOS}
    outputs.update({os.path.join(HERE, "masks", f"{stem}.png"): ("mask", stem) for stem in MASKS})
    existing = [path for path in outputs if os.path.exists(path)]
    if existing and not args.overwrite:
        print(f"{len(existing)} files exist already (e.g. {existing[0]}); pass --overwrite to replace them.",
              file=sys.stderr)
        return 1
    for path, (kind, name) in outputs.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        (load_photo(name) if kind == "photo" else draw_mask(MASKS[name])).save(path)
        print("wrote", os.path.relpath(path, HERE))
    if args.preview:
        os.makedirs(args.preview, exist_ok=True)
        for name in PHOTOS:
            masks = [draw_mask(shapes) for stem, shapes in MASKS.items() if stem.startswith(name + "_")]
            preview(load_photo(name), masks).save(os.path.join(args.preview, f"{name}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
