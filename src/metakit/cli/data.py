"""``metakit data``: verify datasets on disk and look at the episodes drawn from them.

``metakit data check omniglot --root DIR [--json]``
    Verifies both archives -- "verified" means: member names and layout, counts, 20 images per
    character, every zip CRC, and every image's decoded pixels equal to the official image's
    (a manifest of per-image digests ships with the package), so a faithful re-packing passes and
    a changed image fails -- then decodes and caches them and prints the counts of every protocol
    and split, and which checks passed. ``--json`` prints a list of ``{protocol, split,
    alphabets, characters, classes, images}``.

``metakit data show omniglot --root DIR --ways 5 --shots 1 --out episode.png``
    Draws one episode as the model sees it (after preprocessing; bright strokes on black): one
    row per class with its support images, then that class's query images.

``folder`` instead of ``omniglot`` reads the user's own ``root/<class>/<image>`` folder.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from .main import UsageError

__all__ = ["register", "check_omniglot", "draw_episode"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data",
        help="verify datasets and draw example episodes",
        description="Verify datasets on disk and draw example episodes.",
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    c = sub.add_parser(
        "check",
        help="verify a dataset and print its counts per protocol and split",
        description="Verify the dataset files and print the counts of every protocol and split, and which checks "
        "passed: layout and counts, zip CRCs, and the content (Omniglot: the zip's checksum is a known genuine "
        "archive's, or every image decodes to the official pixels of the package's manifest). Decoded tensors "
        "are cached, so later loads are fast.",
    )
    _common(c)
    c.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    c.set_defaults(func=_run_check)

    s = sub.add_parser(
        "show",
        help="draw one few-shot episode to an image file",
        description="Draw one N-way K-shot episode as the model sees it: one row per class, its support "
        "images, then its query images.",
    )
    _common(s)
    s.add_argument("--protocol", choices=["vinyals", "lake"], default="vinyals", help="Omniglot protocol (default vinyals)")
    s.add_argument(
        "--split", default=None, help="split to draw from (default: test for vinyals, evaluation for lake)"
    )
    s.add_argument("--ways", type=int, required=True, help="classes per episode (N)")
    s.add_argument("--shots", type=int, required=True, help="support images per class (K)")
    s.add_argument("--queries", type=int, default=1, help="query images per class (default 1)")
    s.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    s.add_argument("--out", required=True, type=Path, help="output image, e.g. episode.png")
    s.set_defaults(func=_run_show)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", choices=["omniglot", "folder"], help="omniglot, or folder (root/<class>/<image>)")
    p.add_argument("--root", required=True, type=Path, help="folder holding the dataset")
    p.add_argument("--cache-dir", type=Path, default=None, help="decoded-data cache (default $METAKIT_CACHE or ~/.cache/metakit)")
    p.add_argument("--image-size", type=int, default=28, help="side of the square images in pixels (default 28)")
    p.add_argument(
        "--resample",
        default="lanczos",
        help="Pillow filter that resizes the images, as task.resample: lanczos (default, grey levels), nearest "
        "(Omniglot's 1-bit scans stay binary), box, bilinear, hamming or bicubic",
    )
    p.add_argument("--download", action="store_true", help="omniglot: fetch missing archives into --root first")
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="folder: 1 = grayscale, 3 = RGB (default 1)")
    p.add_argument(
        "--invert",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="folder: invert images so dark strokes become bright (default on, as Omniglot)",
    )


def _progress() -> bool:
    return sys.stderr.isatty()


# -- check ------------------------------------------------------------------------------------
def _summary(ds: Any) -> dict[str, int]:
    names = ds.class_names
    return {
        "alphabets": len({n.split("/")[0] for n in names}),
        "characters": len({"/".join(n.split("/")[:2]) for n in names}),
        "classes": ds.num_classes,
        "images": len(ds),
    }


def check_omniglot(
    root: Path, *, cache_dir: Path | None = None, image_size: int = 28, download: bool = False, progress: bool = False,
    resample: str = "lanczos",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Verify the Omniglot archives in ``root``; return (per-archive rows, per-split rows)."""
    from ..datasets.omniglot import (
        ARCHIVES,
        PROTOCOLS,
        Omniglot,
        download_omniglot,
        locate_archive,
        verify_omniglot_archive,
    )

    from ..datasets._cache import resolve_cache_dir

    resolve_cache_dir(cache_dir)  # a cache folder that is a file is refused before the archives are read
    if root.exists() and not root.is_dir():
        raise FileNotFoundError(
            f"--root {str(root)!r} is a file, not a folder; give the folder holding images_background.zip and "
            "images_evaluation.zip (not one of the archives)"
        )
    if not root.is_dir() and not download:
        raise FileNotFoundError(
            f"--root {str(root)!r} is not a folder; give the folder holding images_background.zip and "
            "images_evaluation.zip, or add --download to fetch them into it"
        )
    missing = [a for a in ARCHIVES if locate_archive(root, a) is None]
    if missing and download:
        try:
            download_omniglot(root, missing, progress=progress)
        except FileNotFoundError:
            raise
        except OSError as e:  # network errors: one line, not a traceback
            raise UsageError(str(e)) from e
    archives = []
    for a in ARCHIVES:
        path = locate_archive(root, a)
        if path is None:
            raise FileNotFoundError(
                f"Omniglot archive not found: {root / f'images_{a}.zip'} (nor the folder {root / f'images_{a}'}/); "
                "pass --download to fetch it"
            )
        archives.append({"archive": path.name, "path": str(path), **verify_omniglot_archive(path, a, progress=progress)})
    rows = []
    for protocol, splits in PROTOCOLS.items():
        for split in splits:
            ds = Omniglot(root, protocol, split, image_size=image_size, cache_dir=cache_dir, progress=progress,
                          resample=resample)
            rows.append({"protocol": protocol, "split": split, **_summary(ds)})
    return archives, rows


def _run_check(args: argparse.Namespace) -> int:
    if args.dataset == "folder":
        ds = _folder(args)
        rows = [{"dataset": "folder", "root": str(args.root), "classes": ds.num_classes, "images": len(ds),
                 "min_per_class": ds.min_count, "max_per_class": int(ds.counts.max())}]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            r = rows[0]
            print(f"{r['root']}: {r['classes']} classes, {r['images']} images "
                  f"({r['min_per_class']}..{r['max_per_class']} per class)")
        return 0
    archives, rows = check_omniglot(
        args.root, cache_dir=args.cache_dir, image_size=args.image_size, download=args.download, progress=_progress(),
        resample=args.resample,
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"Omniglot in {args.root}: verified")
    for a in archives:
        print(f"  {a['archive']:<24} {a['alphabets']:>3} alphabets {a['characters']:>5,} characters {a['images']:>7,} images"
              f"  checks passed: {', '.join(a['checks'])}")
    for check in dict.fromkeys(c for a in archives for c in a["checks"]):
        print(f"  {_CHECKS[check]}")
    print()
    head = f"{'protocol':<9} {'split':<11} {'alphabets':>9} {'characters':>10} {'classes':>8} {'images':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['protocol']:<9} {r['split']:<11} {r['alphabets']:>9} {r['characters']:>10,} "
              f"{r['classes']:>8,} {r['images']:>8,}")
    return 0


_CHECKS = {
    "layout": "layout: member names, alphabets, characters, 20 images per character",
    "crc": "integrity: every zip member's CRC",
    "digest": "content: the zip's checksum is that of a known genuine archive",
    "content": "content: every image has the official path and pixels (package manifest of per-image pixel digests)",
}


# -- show -------------------------------------------------------------------------------------
def _folder(args: argparse.Namespace):
    from ..datasets import ImageFolder

    return ImageFolder(args.root, image_size=args.image_size, channels=args.channels, invert=args.invert,
                       resample=args.resample)


def draw_episode(dataset: Any, episode: Any, title: str, out: Path) -> None:
    """Save a figure of one episode: a row per class, support images, a gap, query images."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ways = episode.ways
    sx, sy, qx, qy = episode.support_x, episode.support_y, episode.query_x, episode.query_y
    shots = int((sy == 0).sum())
    queries = int((qy == 0).sum())
    ncols = shots + queries + 1  # one narrow gap column between support and query
    widths = [1.0] * shots + [0.25] + [1.0] * queries
    labels = []
    for i in range(ways):
        name = dataset.class_names[int(episode.classes[i])] if episode.classes is not None else f"class {i}"
        labels.append(f"label {i}\n{_wrap(name)}")
    longest = max(len(line) for lab in labels for line in lab.split("\n"))
    cell, margin, top = 1.15, 0.35 + 0.065 * longest, 0.75  # inches
    grid_width = margin + cell * (shots + queries + 0.25) + 0.1
    width = max(grid_width, 0.4 + 0.085 * max(len(line) for line in title.split("\n")))  # room for the title
    extra = (width - grid_width) / 2  # centre the grid under a long title
    margin += extra
    height = top + cell * ways + 0.1
    fig = Figure(figsize=(width, height), dpi=100)
    grid = fig.add_gridspec(ways, ncols, width_ratios=widths, left=margin / width, right=1 - (0.1 + extra) / width,
                            top=1 - top / height, bottom=0.1 / height, wspace=0.08, hspace=0.12)

    def show(ax, img, color: str) -> None:
        x = dataset.to_float(img)
        if x.shape[0] == 1:
            ax.imshow(x[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(x.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_edgecolor(color)
            side.set_linewidth(2.5)

    for i in range(ways):
        s_imgs = sx[sy == i]
        q_imgs = qx[qy == i]
        for j in range(shots):
            ax = fig.add_subplot(grid[i, j])
            show(ax, s_imgs[j], "tab:blue")
            if j == 0:
                ax.set_ylabel(labels[i], rotation=0, ha="right", va="center", fontsize=8)
            if i == 0:
                ax.set_title(f"support {j + 1}", fontsize=9, color="tab:blue")
        for j in range(queries):
            ax = fig.add_subplot(grid[i, shots + 1 + j])
            show(ax, q_imgs[j], "tab:orange")
            if i == 0:
                ax.set_title(f"query {j + 1}", fontsize=9, color="tab:orange")
    fig.suptitle(title, fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def _wrap(name: str, width: int = 22) -> str:
    """Break a long class name after '/' or '_' so row labels stay readable."""
    tokens = re.findall(r"[^/_]*[/_]|[^/_]+$", name)
    lines, cur = [], ""
    for t in tokens:
        if cur and len(cur) + len(t) > width:
            lines.append(cur)
            cur = t
        else:
            cur += t
    lines.append(cur)
    return "\n".join(lines)


def _run_show(args: argparse.Namespace) -> int:
    from ..tasks import EpisodeSampler

    if args.dataset == "folder":
        ds = _folder(args)
        what = f"folder {args.root}"
    else:
        from ..datasets import Omniglot

        split = args.split or ("test" if args.protocol == "vinyals" else "evaluation")
        try:
            ds = Omniglot(args.root, args.protocol, split, image_size=args.image_size, download=args.download,
                          cache_dir=args.cache_dir, progress=_progress(), resample=args.resample)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise UsageError(str(e)) from e
        what = f"Omniglot {args.protocol}/{split}"
    sampler = EpisodeSampler(ds, args.ways, args.shots, args.queries, seed=args.seed)
    episode = sampler.sample(1)[0]
    size = "x".join(str(s) for s in ds.example_shape[1:])
    title = (f"{what}: {args.ways}-way {args.shots}-shot, {args.queries} quer{'y' if args.queries == 1 else 'ies'} "
             f"per class, seed {args.seed}\nmodel input {size}, values 0..1 (blue: support, orange: query)")
    draw_episode(ds, episode, title, args.out)
    print(f"wrote {args.out} ({args.ways} classes x {args.shots} support + {args.queries} query images)")
    return 0
