"""``metakit predict``: few-shot classification of a user's own images with a trained run.

The support folder holds the labelled examples, one sub-folder per class::

    support/
      cat/   a.png b.png ...
      dog/   c.jpg ...

and the query folder holds the images to classify (directly inside it, or in sub-folders;
they are listed recursively and reported by their path relative to the folder). Every image
goes through exactly the preprocessing the run's training images went through
(:func:`metakit.datasets.preprocess_image` with the run's ``meta["preprocessing"]``: size,
resampling filter, grayscale/RGB, inversion), then ``uint8 / 255`` as in
:meth:`~metakit.datasets.ClassIndexedDataset.to_float`.

The trained algorithm adapts to the support set (``algorithm.adapt``) and scores the queries;
``score`` is the softmax probability of the predicted class over the support classes.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # torch is imported when a command runs (see metakit.cli.main)
    import torch
    from torch import Tensor

__all__ = ["Prediction", "read_support", "read_queries", "predict_images", "fixed_ways", "register"]

#: queries scored per call of ``learner.predict`` (bounds memory on large query folders)
QUERY_CHUNK = 256


@dataclass(frozen=True)
class Prediction:
    """The predicted class of one query file and its softmax probability."""

    file: str
    cls: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "class": self.cls, "score": self.score}


def _check_dir(path: str | os.PathLike, arg: str) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"{arg} {str(folder)!r} does not exist; give a folder of images")
    if not folder.is_dir():
        raise ValueError(f"{arg} {str(folder)!r} is a file, not a folder; give a folder of images")
    return folder


def read_support(
    folder: str | os.PathLike, preprocessing: Mapping[str, Any]
) -> tuple[Tensor, Tensor, list[str], list[Path]]:
    """Read ``folder/<class>/<images>`` as a :class:`~metakit.datasets.ImageFolder`.

    Returns:
        ``(x, y, class_names, files)``: ``x`` uint8 ``[S, C, H, W]``, ``y`` int64 labels
        ``[S]`` numbering the classes in sorted folder-name order, the class names, and the
        file of each example.

    Raises:
        FileNotFoundError / ValueError: a missing folder, images lying directly in ``folder``
            (they would belong to no class), and every error of ``ImageFolder`` (no class
            sub-folders, a class folder without images, an unreadable image), prefixed with
            ``--support``.
    """
    import torch

    from ..datasets import ImageFolder
    from ..datasets.images import list_images

    root = _check_dir(folder, "--support")
    loose = [p.name for p in list_images(root)]
    if loose:
        raise ValueError(
            f"--support {str(root)!r} has images directly inside it ({', '.join(loose[:3])}"
            f"{', ...' if len(loose) > 3 else ''}); put each class's images in a sub-folder "
            f"{str(root)}/<class name>/"
        )
    try:
        ds = ImageFolder(root, **preprocessing)
    except ValueError as e:
        raise ValueError(f"--support: {e}") from None
    y = torch.repeat_interleave(torch.arange(ds.num_classes), ds.counts)
    return ds.data, y, list(ds.class_names), list(ds.files)


def _query_files(root: Path) -> list[Path]:
    """Images under ``root``, recursively, skipping hidden files and folders, sorted by relative path."""
    from ..datasets.images import list_images

    files: list[Path] = []
    for folder, subfolders, _ in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        files.extend(list_images(folder))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def read_queries(path: str | os.PathLike, preprocessing: Mapping[str, Any]) -> tuple[Tensor, list[str]]:
    """Read the query images: every image under ``path`` (recursively, sorted), or one file.

    Returns ``(x, names)``: uint8 ``[Q, C, H, W]`` and each file's path relative to ``path``
    (``/``-separated; the file name when ``path`` is a file).
    """
    import torch

    from ..datasets import IMAGE_EXTENSIONS, load_images

    root = Path(path)
    if root.is_file():
        return load_images([root], **preprocessing)[0][1].unsqueeze(0), [root.name]
    root = _check_dir(root, "--query")
    files = _query_files(root)
    if not files:
        raise ValueError(
            f"--query {str(root)!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)"
        )
    x = torch.stack([image for _, image in load_images(files, **preprocessing)])
    return x, [p.relative_to(root).as_posix() for p in files]


def fixed_ways(algorithm: torch.nn.Module, context: Any) -> int | None:
    """The number of classes the trained model is tied to, or ``None`` if it adapts to any.

    An algorithm's model is tied to the training way count when the backbone options it asks
    for depend on ``ways`` (e.g. a linear head of ``ways`` outputs): compared here for the
    run's ``context`` (a :class:`~metakit.algorithms.BuildContext`) and one more way.
    """
    ways = getattr(context, "ways", None)
    if ways is None:
        return None
    defaults = type(algorithm).model_defaults
    return ways if defaults(context) != defaults(replace(context, ways=ways + 1)) else None


def _to_float(x: Tensor) -> Tensor:
    # the same conversion as ClassIndexedDataset.to_float, which produced the training inputs
    import torch

    return x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x


def predict_images(
    algorithm: torch.nn.Module,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    class_names: list[str],
    query_names: list[str],
) -> list[Prediction]:
    """Adapt ``algorithm`` to the support set and predict every query (eval mode, no grad).

    ``support_x`` / ``query_x`` are uint8 images (or float model input); the mode of every
    sub-module is restored afterwards. A support set of one class is refused (every query
    would get that class with probability 1).
    """
    import torch

    ways = len(class_names)
    if ways < 2:
        only = f" ({class_names[0]!r})" if class_names else ""
        raise ValueError(
            f"the support set (--support) has {ways} class{only}; classification needs at least 2 classes to choose between "
            "(with one, every query would get it with score 1.0): add a sub-folder of examples for each other class"
        )
    device = next((t.device for t in list(algorithm.parameters()) + list(algorithm.buffers())), torch.device("cpu"))
    modes = [(m, m.training) for m in algorithm.modules()]
    try:
        algorithm.eval()
        with torch.no_grad():
            learner = algorithm.adapt(_to_float(support_x).to(device), support_y.to(device), ways)
            chunks = [
                learner.predict(_to_float(query_x[i : i + QUERY_CHUNK]).to(device)) for i in range(0, len(query_x), QUERY_CHUNK)
            ]
    finally:
        for m, mode in modes:
            m.training = mode
    scores = torch.cat(chunks).float().cpu()
    if tuple(scores.shape) != (len(query_names), ways):
        raise ValueError(
            f"{type(algorithm).__name__} returned scores of shape {tuple(scores.shape)}; expected "
            f"[queries, classes] = [{len(query_names)}, {ways}]"
        )
    probs = scores.softmax(-1)
    best, idx = probs.max(-1)
    return [Prediction(n, class_names[int(i)], float(p)) for n, i, p in zip(query_names, idx, best)]


# -- command line ---------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="classify your own images from a few labelled examples with a trained run",
        description=(
            "Adapt a trained run to a folder of labelled examples (SUPPORT/<class>/<images>) and "
            "print the predicted class of every image under QUERY, with its softmax probability. "
            "Images are preprocessed exactly as the run's training images were."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `metakit train`")
    p.add_argument("--support", required=True, metavar="DIR", help="labelled examples: DIR/<class name>/<image files>")
    p.add_argument("--query", required=True, metavar="DIR", help="images to classify (searched recursively), or one image file")
    p.add_argument("--checkpoint", default="best", help="'best' (default), 'last', or the path of a checkpoint file")
    p.add_argument("--json", action="store_true", help="print a JSON list of {file, class, score}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..runtime.run import load_run

    loaded = load_run(args.run_dir, checkpoint=args.checkpoint, fallback=True)
    if loaded.preprocessing is None:
        raise ValueError(
            f"run {str(args.run_dir)!r} was trained on {loaded.config.family.describe()} tasks, which have no "
            "image preprocessing; metakit predict classifies images with a run trained on an image dataset"
        )
    prep = dict(loaded.preprocessing)
    sx, sy, classes, _ = read_support(args.support, prep)
    limit = fixed_ways(loaded.algorithm, loaded.context)
    if limit is not None and len(classes) != limit:
        raise ValueError(
            f"--support {str(args.support)!r} has {len(classes)} classes but run {str(args.run_dir)!r} "
            f"({loaded.algorithm.name}) was trained {limit}-way and its model has {limit} outputs: it predicts "
            f"among exactly {limit} classes; give a support folder with {limit} class sub-folders"
        )
    qx, names = read_queries(args.query, prep)
    preds = predict_images(loaded.algorithm, sx, sy, qx, classes, names)
    if args.json:
        print(json.dumps([p.to_dict() for p in preds], indent=2))
        return 0
    counts = sy.bincount(minlength=len(classes)).tolist()
    print(f"run: {args.run_dir} ({loaded.algorithm.name}, checkpoint {loaded.checkpoint.name})")
    print(f"support: {len(classes)} classes, {len(sy)} images ({', '.join(f'{c}: {n}' for c, n in zip(classes, counts))})")
    print(f"preprocessing: {', '.join(f'{k}={v}' for k, v in prep.items())}")
    width = max(len("file"), *(len(p.file) for p in preds))
    cwidth = max(len("class"), *(len(p.cls) for p in preds))
    print(f"{'file':<{width}}  {'class':<{cwidth}}  score")
    for pr in preds:
        print(f"{pr.file:<{width}}  {pr.cls:<{cwidth}}  {pr.score:.4f}")
    return 0
