"""`dist-train prepare imagefolder`: a `ROOT/<class name>/<image>` tree of PNG
and JPEG files as uint8 (C, H, W) images of one size.

The rules, in one place (docs/data.md repeats them):
- Every folder directly under ROOT is a class; the class names are the folder
  names sorted (by code point), and a class's index is its position.
- Every file under a class folder (subfolders included) must be a PNG or JPEG
  image (.png, .jpg, .jpeg, any case); any other file, any file directly in
  ROOT, an empty class folder and every image that does not decode are named,
  all of them in one error (up to MAX_NAMED, then a count). Hidden files and
  folders (names starting with ".") are skipped.
- Images are read in sorted order (class, then path inside the class folder),
  so the same tree gives the same samples in the same order.
- Each image is turned upright by its EXIF orientation, converted to grey (L)
  or RGB (transparency is dropped; 16-bit images are scaled to 8 bits), and
  resized as a whole to H x W with Pillow's bilinear filter (the aspect ratio
  is not kept; nothing is cropped).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dist_train.errors import DistTrainError, name_some

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
COLORS = {"grey": 1, "rgb": 3}


@dataclass(frozen=True)
class ImageFolder:
    inputs: np.ndarray  # uint8 (N, C, H, W)
    targets: np.ndarray  # int64 class indices (N,)
    class_names: tuple[str, ...]
    source: dict


@dataclass(frozen=True)
class Problem:
    """One file (or folder) of an image tree that cannot be used."""

    text: str  # what is wrong, naming the path
    kind: str  # a key of _FIXES


# What to do about a kind of problem: (for one problem, for several of them).
_FIXES = {
    "loose": ("move it into a class folder or out of {root}",
              "move the files lying directly in {root} into class folders or out of it"),
    "not_image": ("move it out of the image tree", "move the files that are not PNG or JPEG images out of the tree"),
    "empty": ("add some or remove the folder", "add images to the empty class folders or remove them"),
    "decode": ("it is not a readable PNG or JPEG: replace or delete the file, then run the command again",
               "replace or delete the images that do not decode"),
}


class UndecodableImage(DistTrainError):
    """An image file that does not decode; `problem` says which and why (None
    once the error has crossed a process boundary: the message still does)."""

    def __init__(self, message: str, problem: Problem | None = None) -> None:
        super().__init__(message)
        self.problem = problem


def refuse(root: Path, problems: list[Problem]) -> None:
    """Raise one DistTrainError naming every problem of the tree under `root`
    (up to MAX_NAMED, then a count) and what to do, so one run finds them all."""
    if len(problems) == 1:
        raise DistTrainError(f"{problems[0].text}; {_FIXES[problems[0].kind][0].format(root=root)}")
    if problems:
        fixes = [_FIXES[kind][1].format(root=root) for kind in _FIXES if any(p.kind == kind for p in problems)]
        raise DistTrainError(f"{len(problems)} problems in the image tree {root}: "
                             f"{name_some([p.text for p in problems])}. To fix: {'; '.join(fixes)}; then run the "
                             "command again")


def scan_images(root: Path) -> tuple[tuple[str, ...], list[tuple[Path, int]], list[Problem]]:
    """The class names, (image file, class index) of every image in the order
    they are stored, and every problem of the layout (a file directly in ROOT,
    a file that is not a PNG or JPEG, an empty class folder)."""
    root = Path(root)
    if not root.is_dir():
        raise DistTrainError(f"--source-dir {root} is not a directory; give the folder that holds one folder per "
                             "class (ROOT/<class name>/<image>)")
    classes, problems = [], []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            problems.append(Problem(f"{Path(entry.path)} lies directly in {root}, where only class folders belong "
                                    "(ROOT/<class name>/<image>)", "loose"))
            continue
        classes.append(entry.name)
    if not classes:
        raise DistTrainError(f"{root} holds no class folders; lay the images out as {root}/<class name>/<image>")
    files = []
    for index, name in enumerate(classes):
        found, strays = [], []
        for directory, subdirs, names in os.walk(root / name):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            for file in names:
                if not file.startswith("."):
                    path = Path(directory) / file
                    (found if path.suffix.lower() in IMAGE_SUFFIXES else strays).append(path)
        problems += [Problem(f"{path} is not a PNG or JPEG image (only {', '.join(IMAGE_SUFFIXES)} files may lie in "
                             "a class folder)", "not_image") for path in sorted(strays, key=lambda p: p.as_posix())]
        if not found:  # named even beside its stray files: once they are moved out, it would be refused next
            problems.append(Problem(f"class folder {root / name} holds no images", "empty"))
        files += [(path, index) for path in sorted(found, key=lambda p: p.relative_to(root).as_posix())]
    return tuple(classes), files, problems


def list_images(root: Path) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """The class names and (image file, class index) of every image, in the
    order they are stored; every problem of the layout in one error."""
    classes, files, problems = scan_images(root)
    refuse(Path(root), problems)
    return classes, files


def decode_image(path: Path, size: tuple[int, int], color: str) -> np.ndarray:
    """One image file as uint8 (C, H, W); a file that does not decode raises
    UndecodableImage naming it."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path, formats=["PNG", "JPEG"]) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... on a broken file
        problem = Problem(f"cannot decode image {path} ({type(exc).__name__}: {exc})", "decode")
        raise UndecodableImage(f"{problem.text}; {_FIXES['decode'][0]}", problem) from None
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit grey: scale, don't clip, to 8 bits
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif image.mode == "P":  # via RGBA, so a palette's transparency is dropped quietly
        image = image.convert("RGBA")
    image = image.convert("L" if color == "grey" else "RGB")
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if color == "grey" else pixels.transpose(2, 0, 1)


def load_image_folder(root: Path, size: tuple[int, int] | None, color: str) -> ImageFolder:
    if size is None:
        raise DistTrainError("`prepare imagefolder` needs --image-size H or H,W: every image is resized to it")
    if len(size) != 2 or min(size) < 1:
        raise DistTrainError(f"--image-size {','.join(map(str, size))} must be H or H,W with positive sizes, "
                             "e.g. 32 or 32,48")
    if color not in COLORS:
        raise DistTrainError(f"--color {color!r} is not one of: {', '.join(COLORS)}")
    class_names, files, problems = scan_images(root)
    inputs = np.empty((len(files), COLORS[color], *size), dtype=np.uint8)
    for i, (path, _) in enumerate(files):  # every file, so one run names every bad one
        try:
            inputs[i] = decode_image(path, size, color)
        except UndecodableImage as exc:
            problems.append(exc.problem)
    refuse(Path(root), problems)
    targets = np.array([index for _, index in files], dtype=np.int64)
    source = {"source": "imagefolder", "directory": str(root), "image_size": list(size), "color": color,
              "resize": "bilinear"}
    return ImageFolder(inputs, targets, class_names, source)
