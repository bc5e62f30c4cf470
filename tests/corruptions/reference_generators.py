"""Record the original CIFAR-10-C generator's outputs and random draws on a few CIFAR-10 test images, in its 2019
environment, so CI compares our corruptions with it without its code or environment
(``test_reference_generators.py``).

The generator is ``ImageNet-C/create_c/make_cifar_c.py`` of hendrycks/robustness (all 19 corruptions, five
severities), plus ``make_imagenet_64_c.py`` for glass blur at a shuffle radius of 2 (CIFAR-10-C's radius is 1).
Both run their dataset loop at import and import torch, so only their imports (less torch's), function and
class definitions and the line declaring ImageMagick's motion blur to ctypes are executed (parsed with ``ast``);
their own imports then give them the libraries below, so no shim. Wand's motion blur runs for real.

numpy's random functions are replaced, for each case, by those of one ``RandomState`` seeded per case, and every
call and its result are logged in order; any other numpy random function raises. A case whose calls take only
plain arguments (all but shot noise, whose Poisson rates are the image) is stored as its seed and calls, which
the test replays (``RandomState``'s streams are frozen across numpy versions); the others by value. Every case
keeps the sha256 of its draws (``digest``), which the test checks. The output is stored as the generator stores
it, ``np.uint8(out)``. The inputs are CIFAR-10 test images (``tests/aa_engine/fixtures``) and, for the 64-pixel
glass blur, a patch of scikit-learn's sample photograph.

Environment (versions written into the fixture): Python 3.7.16, numpy 1.16.6, scipy 1.2.3, scikit-image 0.15.0
(with networkx 2.5.1, PyWavelets 1.1.1, imageio 2.6.1, matplotlib 3.0.3), opencv-python 4.1.2.30, Pillow 6.2.2
(its wheel bundles IJG libjpeg 9), Wand 0.5.9 on Debian 12's ImageMagick 6.9.11-60 Q16 (``libmagickwand-6.q16-6``;
the 2019 Debian had 6.9.10), and scikit-learn 0.21.3 for the photograph. To rebuild it and re-record, from the
repository root::

    apt-get install -y libmagickwand-6.q16-6
    ~/.pyenv/versions/3.7.16/bin/python -m venv /tmp/cifarc-2019
    /tmp/cifarc-2019/bin/pip install --only-binary :all: numpy==1.16.6 scipy==1.2.3 scikit-image==0.15.0 \\
        opencv-python==4.1.2.30 Pillow==6.2.2 Wand==0.5.9 scikit-learn==0.21.3 networkx==2.5.1 \\
        PyWavelets==1.1.1 imageio==2.6.1 joblib==0.14.1 matplotlib==3.0.3
    git clone https://github.com/hendrycks/robustness /tmp/robustness && git -C /tmp/robustness checkout COMMIT
    OMP_NUM_THREADS=1 /tmp/cifarc-2019/bin/python tests/corruptions/reference_generators.py /tmp/robustness
    rm -rf /tmp/cifarc-2019 /tmp/robustness

Offline, from a bare mirror of the repository instead of the clone: ``mkdir -p /tmp/robustness && git
--git-dir=MIRROR archive COMMIT ImageNet-C/create_c | tar -x -C /tmp/robustness``. Recording takes 2 s.
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
IMAGES = ["cifar10_00_3.png", "cifar10_04_6.png"]
# On one image: noise drawn value by value, and deterministic filters. On two: corruptions drawing a few spatial
# choices (a field, an angle, a crop), and JPEG, whose comparison is approximate (its error varies with content).
ONE_IMAGE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "contrast", "brightness", "saturate",
             "gaussian_blur", "defocus_blur", "zoom_blur", "pixelate")
TWO_IMAGES = ("glass_blur", "motion_blur", "snow", "frost", "fog", "spatter", "elastic_transform", "jpeg_compression")
CASES = [(name, "make_cifar_c.py", s) for name in TWO_IMAGES + ONE_IMAGE for s in range(1, 6)] \
    + [("glass_blur", "make_imagenet_64_c.py", s) for s in (4, 5)]
RECORDED = ("randint", "normal", "uniform", "poisson", "choice")


def digest(draws: list) -> str:
    """sha256 of a case's draws in call order, each as its kind, shape and values (64-bit, or bool)."""
    h = hashlib.sha256()
    for draw in draws:
        draw = np.asarray(draw)
        kind = {"b": "?", "i": "<i8", "u": "<i8", "f": "<f8"}[draw.dtype.kind]
        h.update(f"{kind}{draw.shape}".encode())
        h.update(np.ascontiguousarray(draw, dtype=kind).tobytes())
    return h.hexdigest()


def _plain(value):
    """``value`` as JSON (tuples as lists), or ``Ellipsis`` where it holds an array (not replayable)."""
    if isinstance(value, np.ndarray):
        return Ellipsis
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return Ellipsis if Ellipsis in items else items
    if isinstance(value, dict):
        items = {k: _plain(v) for k, v in value.items()}
        return Ellipsis if Ellipsis in items.values() else items
    return value.item() if isinstance(value, np.generic) else value


class Recorder:
    """numpy.random, while entered: the functions the generator calls draw from ``RandomState(seed)`` and are
    logged with their results; the rest raise, so no draw goes unrecorded."""

    def __init__(self, seed: int):
        self.seed, self.state = seed, np.random.RandomState(seed)
        self.calls: list = []  # [name, args, kwargs, count]: runs of equal calls
        self.draws: list = []
        self.replayable = True

    def _wrap(self, name: str):
        def draw(*args, **kwargs):
            value = getattr(self.state, name)(*args, **kwargs)
            call = [name, _plain(args), _plain(kwargs)]
            self.replayable &= Ellipsis not in call
            if self.calls and self.calls[-1][:3] == call:
                self.calls[-1][3] += 1
            else:
                self.calls.append(call + [1])
            self.draws.append(np.asarray(value))
            return value
        return draw

    @staticmethod
    def _refuse(name: str):
        def refuse(*args, **kwargs):
            raise RuntimeError(f"numpy.random.{name} is not recorded")
        return refuse

    def __enter__(self) -> "Recorder":
        names = [f for f in dir(np.random) if type(getattr(np.random, f)) is type(np.random.normal)]
        self.saved = {f: getattr(np.random, f) for f in names}
        for f in names:
            setattr(np.random, f, self._wrap(f) if f in RECORDED else self._refuse(f))
        return self

    def __exit__(self, *exc) -> None:
        for f, fn in self.saved.items():
            setattr(np.random, f, fn)


def _kept(node: ast.stmt) -> bool:
    """The generator's imports (less torch), functions, ``MotionImage`` and its ctypes declaration."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        return not any(m.split(".")[0] in ("torch", "torchvision") for m in modules)
    if isinstance(node, ast.ClassDef):
        return node.name == "MotionImage"
    if isinstance(node, ast.Assign):
        return isinstance(node.targets[0], ast.Attribute)  # wandlibrary.MagickMotionBlurImage.argtypes = ...
    return isinstance(node, ast.FunctionDef)


def load_functions(path: Path) -> dict:
    """The module's definitions, executed with its own imports."""
    tree = ast.parse(path.read_text())
    tree.body = [node for node in tree.body if _kept(node)]
    namespace: dict = {}
    exec(compile(tree, str(path), "exec"), namespace)  # noqa: S102 - the reference generator, pinned by sha256
    return namespace


def images() -> dict:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = {name: np.asarray(Image.open(str(HERE.parent / "aa_engine" / "fixtures" / "cifar10" / name)).convert("RGB"))
           for name in IMAGES}
    out["china_64"] = np.ascontiguousarray(load_sample_images().images[0][100:228:2, 200:328:2])
    return out


def versions() -> dict:
    import cv2
    import PIL
    import scipy
    import skimage
    import wand.version

    return {"numpy": np.__version__, "scipy": scipy.__version__, "scikit-image": skimage.__version__,
            "opencv": cv2.__version__, "Pillow": PIL.__version__, "Wand": wand.version.VERSION,
            "ImageMagick": wand.version.MAGICK_VERSION, "python": sys.version.split()[0]}


def record(checkout: Path) -> None:
    from PIL import Image

    folder = checkout / "ImageNet-C" / "create_c"
    sources = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in SOURCES}
    modules = {name: load_functions(folder / name) for name in SOURCES}
    pictures = images()
    arrays, index = {}, []
    cwd = os.getcwd()
    os.chdir(str(folder))  # frost reads ./frost1.png ...
    try:
        for case, (name, source, severity) in enumerate(CASES):
            inputs = ["china_64"] if source == "make_imagenet_64_c.py" else IMAGES[:1] if name in ONE_IMAGE else IMAGES
            for k, image_name in enumerate(inputs):
                image = pictures[image_name]
                with Recorder(seed=1000 * case + k) as recorder:
                    out = modules[source][name](Image.fromarray(image), severity)
                key = "{}/{}/{}/{}".format(name, source, severity, image_name)
                arrays["input/" + image_name] = image
                arrays[key + "/output"] = np.uint8(out)  # as the generator stores it
                entry = {"key": key, "input": image_name, "shapes": [list(d.shape) for d in recorder.draws],
                         "sha256": digest(recorder.draws)}
                if recorder.replayable:
                    entry.update(seed=recorder.seed, calls=recorder.calls)
                else:
                    flat = np.concatenate([d.ravel() for d in recorder.draws])
                    arrays[key + "/draws"] = flat.astype(np.int32 if flat.dtype.kind == "i" else np.float64)
                index.append(entry)
    finally:
        os.chdir(cwd)
    meta = {"repository": "hendrycks/robustness", "commit": COMMIT, "sources": sources, "cases": index,
            "versions": versions()}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(str(FIXTURE), **arrays)
    print("{}: {} cases, {:.0f} KiB".format(FIXTURE, len(index), FIXTURE.stat().st_size / 1024))


if __name__ == "__main__":
    record(Path(sys.argv[1]))
