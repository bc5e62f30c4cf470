"""Record the original CIFAR-10-C generator's outputs and random draws on a few CIFAR-10 test images, so CI
compares our corruptions with it without its code or environment (``test_reference_generators.py``).

    python tests/corruptions/reference_generators.py /path/to/hendrycks-robustness   # a checkout at COMMIT

The generator is ``ImageNet-C/create_c/make_cifar_c.py`` of hendrycks/robustness, plus ``make_imagenet_64_c.py``
for glass blur at a shuffle radius of 2 (CIFAR-10-C's radius is 1). Both run their dataset loop at import and
import Wand, so only their function definitions are executed (parsed with ``ast``), in a namespace holding the
modules they use. numpy's random functions are wrapped to record every draw in call order (one
flat array per case, int32 or float64, with each draw's shape in the index); the output is stored
as the generator stores it, ``np.uint8(out)``. The inputs are CIFAR-10 test images (``tests/aa_engine/fixtures``)
and, for the 64-pixel glass blur, a patch of scikit-learn's sample photograph.

Environment: the libraries installed here (versions written into the fixture), not the generator's 2019 one.
The one shim: scikit-image's ``gaussian`` took ``multichannel=True`` then and takes ``channel_axis=-1`` now.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "reference_cifar_c.npz"
COMMIT = "8190fe329f5f072a06e3a2aea02bb5dda69aed9f"  # hendrycks/robustness; the fixture records the sources' sha256
SOURCES = ("make_cifar_c.py", "make_imagenet_64_c.py")
IMAGES = ["cifar10_00_3.png", "cifar10_04_6.png", "cifar10_07_6.png"]
DETERMINISTIC = ("contrast", "brightness", "saturate", "gaussian_blur", "defocus_blur", "zoom_blur", "pixelate",
                 "jpeg_compression")
NOISE = ("gaussian_noise", "speckle_noise", "shot_noise")  # draws stored: severities 1 and 5
CASES = [("glass_blur", "make_cifar_c.py", s) for s in range(1, 6)] \
    + [("glass_blur", "make_imagenet_64_c.py", s) for s in (4, 5)] \
    + [("spatter", "make_cifar_c.py", s) for s in range(1, 6)] \
    + [("frost", "make_cifar_c.py", s) for s in range(1, 6)] \
    + [(name, "make_cifar_c.py", s) for name in DETERMINISTIC for s in range(1, 6)] \
    + [(name, "make_cifar_c.py", s) for name in NOISE for s in (1, 5)]


class Recorder:
    """numpy.random's functions as the generator calls them, each result recorded in call order."""

    def __init__(self, seed: int):
        self.state = np.random.RandomState(seed)
        self.draws: list[np.ndarray] = []

    def _record(self, value):
        self.draws.append(np.asarray(value))
        return value

    def randint(self, *args, **kwargs):
        return self._record(self.state.randint(*args, **kwargs))

    def normal(self, *args, **kwargs):
        return self._record(self.state.normal(*args, **kwargs))

    def uniform(self, *args, **kwargs):
        return self._record(self.state.uniform(*args, **kwargs))

    def poisson(self, *args, **kwargs):
        return self._record(self.state.poisson(*args, **kwargs))


def load_functions(path: Path) -> dict:
    """The module's function definitions, executed in a namespace with what they use."""
    from io import BytesIO

    import cv2
    import skimage as sk
    from PIL import Image as PILImage
    from scipy.ndimage import map_coordinates
    from scipy.ndimage import zoom as scizoom
    from skimage.filters import gaussian as _gaussian

    def gaussian(image, sigma=1, multichannel=False, **kwargs):
        return _gaussian(image, sigma=sigma, channel_axis=-1 if multichannel else None, **kwargs)

    tree = ast.parse(path.read_text())
    tree.body = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    namespace = {"np": np, "cv2": cv2, "sk": sk, "gaussian": gaussian, "PILImage": PILImage,
                 "scizoom": scizoom, "map_coordinates": map_coordinates, "BytesIO": BytesIO}
    exec(compile(tree, str(path), "exec"), namespace)  # noqa: S102 - the reference generator, pinned by sha256
    return namespace


def images() -> dict[str, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = {name: np.asarray(Image.open(HERE.parent / "aa_engine" / "fixtures" / "cifar10" / name).convert("RGB"))
           for name in IMAGES}
    out["china_64"] = np.ascontiguousarray(load_sample_images().images[0][100:228:2, 200:328:2])
    return out


def record(checkout: Path) -> None:
    from PIL import Image

    folder = checkout / "ImageNet-C" / "create_c"
    sources = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in SOURCES}
    modules = {name: load_functions(folder / name) for name in SOURCES}
    pictures = images()
    arrays, index = {}, []
    cwd = os.getcwd()
    os.chdir(folder)  # frost reads ./frost1.png ...
    try:
        for case, (name, source, severity) in enumerate(CASES):
            inputs = ["china_64"] if source == "make_imagenet_64_c.py" else \
                IMAGES[:1] if name in NOISE + DETERMINISTIC else IMAGES
            for k, image_name in enumerate(inputs):
                image = pictures[image_name]
                recorder = Recorder(seed=1000 * case + k)
                saved = {f: getattr(np.random, f) for f in ("randint", "normal", "uniform", "poisson")}
                for f in saved:
                    setattr(np.random, f, getattr(recorder, f))
                try:
                    out = modules[source][name](Image.fromarray(image), severity)
                finally:
                    for f, fn in saved.items():
                        setattr(np.random, f, fn)
                key = f"{name}/{source}/{severity}/{image_name}"
                arrays[f"input/{image_name}"] = image
                arrays[f"{key}/output"] = np.uint8(out)  # as the generator stores it
                flat = np.concatenate([d.ravel() for d in recorder.draws]) if recorder.draws else np.zeros(0, int)
                arrays[f"{key}/draws"] = flat.astype(np.int32 if flat.dtype.kind == "i" else np.float64)
                index.append({"key": key, "input": image_name, "shapes": [list(d.shape) for d in recorder.draws]})
    finally:
        os.chdir(cwd)
    import cv2
    import scipy
    import skimage

    meta = {"repository": "hendrycks/robustness", "commit": COMMIT, "sources": sources, "cases": index,
            "versions": {"numpy": np.__version__, "scikit-image": skimage.__version__, "opencv": cv2.__version__,
                         "scipy": scipy.__version__, "python": sys.version.split()[0]}}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **arrays)
    print(f"{FIXTURE}: {len(index)} cases, {FIXTURE.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    record(Path(sys.argv[1]))
