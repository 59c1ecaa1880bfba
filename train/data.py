"""Training data: aligned HQ faces → (degraded LQ, HQ, facial component boxes).

The degradation is the official GFPGAN one (blur → downsample → noise → JPEG → resize back → colour
jitter / gray), every number from the ``degradation`` config section. Random parameters are drawn from a
``numpy.random.Generator`` seeded per sample from (seed, epoch, rank, position), so a run is reproducible
and resumes exactly, whatever the number of loader workers. The blur kernel and JPEG codec are basicsr's
(``basicsr.data.degradations``, the official functions).
"""

from __future__ import annotations

import io
import math
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
import torch
from basicsr.data import degradations
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import functional as TF
from tqdm import tqdm

import gfp  # noqa: F401  (torchvision shim before basicsr)
from gfp.faces import FFHQ_TEMPLATE_512, alignment_matrix, detect_faces, resize_aligned
from gfp.imageio import ImageReadError, read_image
from gfp.loading import load_model
from gfp.messages import first_line
from gfp.registry import detector_entry

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

COMPONENTS = ("left_eye", "right_eye", "mouth")


class DataError(ValueError):
    """A dataset folder, lmdb or landmarks file that cannot be used."""


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files directly inside ``folder`` (clear error when there are none)."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    with os.scandir(root) as entries:  # an entry's type comes with the listing: no stat per file
        files = sorted(
            Path(e.path)
            for e in entries
            if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()
        )
    if not files:
        nested = subfolders_with_images(root)
        held = f": {', '.join(p.name for p in nested[:3])}{', ...' if len(nested) > 3 else ''} hold images"
        raise DataError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root} (subfolders are not searched"
            f"{held if nested else ''})"
        )
    return files


def subfolders_with_images(folder: str | Path) -> list[Path]:
    """The subfolders of ``folder`` with images somewhere inside: :func:`list_images` does not look there."""
    with os.scandir(folder) as entries:
        subfolders = sorted(Path(e.path) for e in entries if e.is_dir())
    return [
        sub
        for sub in subfolders
        if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in sub.rglob("*"))  # stops at the first image
    ]


def same_folder(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one folder, also through a link or another spelling of it."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return a.samefile(b)
    return a.resolve() == b.resolve()


def stem_clash(files: list[Path]) -> tuple[Path, Path] | None:
    """The first two files of one name without extension (``a.jpg`` and ``a.png``; None: there are none),
    which whatever is named by the stem would mix up."""
    stems: dict[str, Path] = {}
    for p in files:
        if stems.setdefault(p.stem, p) != p:
            return stems[p.stem], p
    return None


def _one_per_stem(files: list[Path], written_as: str) -> None:
    """Refuse two inputs of one name: their outputs are named by the stem (``written_as`` with ``{}`` for
    it), so the second would overwrite the first."""
    clash = stem_clash(files)
    if clash:
        first, second = clash
        raise DataError(
            f"{first.name} and {second.name} would both be written as {written_as.format(first.stem)}: "
            "rename one"
        )


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the end chunk every complete PNG closes with
_LMDB_HEAD = 1 << 16  # a PNG's chunks before its pixels (size, colour profile) fit in it, as a rule


def _opens(image: str | Path | IO[bytes], tail: Callable[[], bytes]) -> tuple[int, int] | None:
    """The size of ``image`` if it opens as an image without decoding it (None if not): its header parses
    and a PNG ends with its end chunk (``tail()``: its last bytes; else all its chunks are read and their
    checksums checked, so one cut short fails while one with bytes after the end passes). A cheap look, so
    a large dataset is checked in seconds."""
    try:
        with Image.open(image) as img:
            size = img.size
            if img.format != "PNG" or tail() == PNG_END:
                return size
            img.verify()
        return size
    except Exception:  # noqa: BLE001  (Pillow fails a broken file in many ways: one answer)
        return None


def _openable(path: str | Path) -> tuple[int, int] | None:
    """:func:`_opens` for an image file."""

    def tail() -> bytes:
        with open(path, "rb") as fh:
            fh.seek(-len(PNG_END), 2)
            return fh.read()

    return _opens(path, tail)


def _buffer_openable(buf: memoryview) -> tuple[int, int] | None:
    """:func:`_opens` for an image held in an lmdb (a view of its memory map): a complete PNG is looked at
    through its first bytes and its end, so the pre-check does not read a whole dataset of PNGs."""
    tail = bytes(buf[-len(PNG_END) :])
    if len(buf) > _LMDB_HEAD:
        size = _opens(io.BytesIO(bytes(buf[:_LMDB_HEAD])), lambda: tail)
        if size is not None:
            return size  # a complete PNG, or any other format's header (it is not decoded whole here)
    return _opens(io.BytesIO(bytes(buf)), lambda: tail)


def check_images(files: list[str] | list[Path]) -> None:
    """Refuse unreadable images (not images, cut short) before training, rather than when one is first
    sampled, maybe hours in (and again at the same sample on every resume)."""
    _refuse_unreadable([str(p) for p in files if _openable(p) is None])


def check_faces(files: list[str] | list[Path]) -> None:
    """:func:`check_images`, and refuse faces that are not square (from the same look at their headers):
    before a command writes or scores anything, so a bad file late in a folder leaves no part of the work
    done."""
    _refuse_bad({str(path): _openable(path) for path in files})


def _refuse_bad(sizes: dict[str, tuple[int, int] | None]) -> None:
    """Refuse the images of ``sizes`` (path → header size, None: it does not open) that do not open, then
    those that are not square: no aligned face."""
    _refuse_unreadable([path for path, size in sizes.items() if size is None])
    oblong = [f"{Path(path).name} is {s[0]}x{s[1]}" for path, s in sizes.items() if s and s[0] != s[1]]
    if oblong:
        more = f" and {len(oblong) - 5} more" if len(oblong) > 5 else ""
        what = "not a square aligned face" if len(oblong) == 1 else "not square aligned faces"
        raise DataError(f"{', '.join(oblong[:5])}{more}, {what} (python -m train crop aligns photos)")


def _refuse_unreadable(bad: list[str]) -> None:
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"unreadable image(s), remove or replace them: {', '.join(bad[:5])}{more}")


# ----------------------------------------------------------------------------------------------- lmdb
def write_lmdb(files: list[Path], lmdb_path: str | Path, compress_level: int = 1) -> Path:
    """Pack images into a basicsr-style lmdb (``data.mdb`` + ``meta_info.txt``, key = file stem)."""

    def read(p: Path) -> np.ndarray:
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DataError(f"unreadable image: {p}")
        return img

    total = sum(p.stat().st_size for p in files)
    return _pack_lmdb(((p.stem, read(p)) for p in files), lmdb_path, total * 10, compress_level)


def _pack_lmdb(
    images: Iterable[tuple[str, np.ndarray]], lmdb_path: str | Path, map_size: int, compress_level: int
) -> Path:
    """Write (key, image) pairs as PNGs into a new basicsr-style lmdb of at least ``map_size`` bytes."""
    import lmdb

    out = Path(lmdb_path)
    if out.suffix != ".lmdb":
        raise DataError(f"lmdb folder name must end with .lmdb, got {out}")
    _refuse_existing(out)
    made = not out.exists()
    env = lmdb.open(str(out), map_size=max(map_size, 1 << 24))
    lines = []
    try:
        with env.begin(write=True) as txn:
            for key, img in images:
                ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
                txn.put(key.encode("utf-8"), buf.tobytes())  # ASCII names: basicsr's own keys
                h, w = img.shape[:2]
                c = 1 if img.ndim == 2 else img.shape[2]
                lines.append(f"{key}.png ({h},{w},{c}) {compress_level}\n")
    except BaseException:  # a face that fails to decode, Ctrl-C: no empty lmdb left that blocks a rerun
        env.close()
        for name in ("data.mdb", "lock.mdb"):
            (out / name).unlink(missing_ok=True)
        if made and not any(out.iterdir()):
            out.rmdir()
        raise
    env.close()
    (out / "meta_info.txt").write_text("".join(lines), encoding="utf-8")
    return out


def _refuse_existing(lmdb_path: Path) -> None:
    """Refuse an lmdb folder that holds anything: writing into it would keep its old entries beside the new
    ones (its meta_info.txt would list the new ones only), and replacing it could delete a dataset."""
    if lmdb_path.is_dir() and any(lmdb_path.iterdir()):
        raise DataError(
            f"{lmdb_path} already exists: remove it or give another name (its old entries would stay)"
        )


_LMDB_ENVS: dict[Path, Any] = {}


def _lmdb_env(root: Path) -> Any:
    """The read-only environment of an lmdb, opened once per process and shared by all its readers: lmdb
    refuses a second open in one process, and the training and validation faces of one lmdb (and the
    run's first read and its check) are read through different datasets."""
    key = root.resolve()
    if key not in _LMDB_ENVS:
        import lmdb

        _LMDB_ENVS[key] = lmdb.open(str(root), readonly=True, lock=False, readahead=False)
    return _LMDB_ENVS[key]


def _close_inherited_lmdb_envs() -> None:
    """In a forked process (a loader worker), close the parent's environments: lmdb forbids using them
    after a fork, and counts their files as open in this process too, so it would refuse to reopen them."""
    for env in _LMDB_ENVS.values():
        env.close()
    _LMDB_ENVS.clear()


os.register_at_fork(after_in_child=_close_inherited_lmdb_envs)


class ImageSource:
    """Reads encoded image bytes from a folder or a basicsr-style lmdb (opened lazily per worker)."""

    def __init__(self, root: str | Path, extra: list[str | Path] | tuple = ()) -> None:
        self.root = Path(root)
        # Folders of faces that are only ever trained on: they follow the main source's images, so the
        # hold-out (the last main files) and every main index stay what they are without them.
        self.extra = [str(p) for folder in extra for p in list_images(folder)]
        if self.root.suffix == ".lmdb":
            meta = self.root / "meta_info.txt"
            if not meta.is_file():
                raise DataError(f"{self.root} has no meta_info.txt (is it a basicsr lmdb?)")
            self.keys = [
                line.split(" ")[0].rsplit(".", 1)[0]
                for line in meta.read_text(encoding="utf-8").splitlines()
                if line
            ]
            self.is_lmdb = True
        else:
            self.keys = [str(p) for p in list_images(self.root)]
            self.is_lmdb = False

    def files(self) -> list[str]:
        """The image files of the folders (an lmdb's images are inside it: not listed)."""
        return ([] if self.is_lmdb else self.keys) + self.extra

    def check(self) -> None:
        """:func:`check_faces` for every image: the files, and an lmdb's entries (a key its meta_info.txt
        lists but its database lacks, bytes that do not open, or a face that is not square, named as
        ``DB.lmdb:key``; an lmdb written by another tool may hold any shape). An entry's size is read from
        its header, in the look that checks it opens: its meta_info.txt shape could disagree with it."""
        sizes = {path: _openable(path) for path in self.files()}
        if self.is_lmdb:
            with _lmdb_env(self.root).begin(buffers=True) as txn:
                for key in self.keys:
                    buf = txn.get(key.encode("utf-8"))
                    sizes[f"{self.root}:{key}"] = None if buf is None else _buffer_openable(buf)
        _refuse_bad(sizes)  # found at its first read, maybe hours in, otherwise

    def __len__(self) -> int:
        """Images of the main source (the extra folders' come after them)."""
        return len(self.keys)

    def stem(self, index: int) -> str:
        if index >= len(self.keys):
            return Path(self.extra[index - len(self.keys)]).stem
        return self.keys[index] if self.is_lmdb else Path(self.keys[index]).stem

    def read(self, index: int) -> np.ndarray:
        """BGR float32 in [0, 1]."""
        if index >= len(self.keys):
            key, from_lmdb = self.extra[index - len(self.keys)], False
        else:
            key, from_lmdb = self.keys[index], self.is_lmdb
        if from_lmdb:
            with _lmdb_env(self.root).begin(write=False) as txn:
                buf = txn.get(key.encode("utf-8"))
            if buf is None:
                raise DataError(f"key {key!r} missing from {self.root}")
            img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
        else:
            img = cv2.imread(key, cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"unreadable image: {key}")
        return img.astype(np.float32) / 255.0


# ------------------------------------------------------------------------------ facial component boxes
def _numpy_safe_globals() -> list[Any]:
    """The exact numpy objects a pickled dict of float arrays references (numpy 1.x and 2.x spellings)."""
    from numpy._core import multiarray

    allowed: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    allowed += [(multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += [(multiarray.scalar, "numpy.core.multiarray.scalar")]
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType"):
        allowed.append(getattr(np.dtypes, name))
    return allowed


def load_component_file(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Official ``FFHQ_eye_mouth_landmarks_512.pth``: {``'00000000'``: {part: [x, y, half_len]}} at 512 px.

    The file is a numpy pickle; it is loaded with ``weights_only=True`` and only the numpy array types
    allow-listed, never with arbitrary unpickling.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"components file not found: {p}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            raw = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's text would advise loading it unsafely: never
        raise DataError(f"{p} holds objects other than arrays and numbers: refused, not loaded") from None
    try:
        out: dict[str, dict[str, np.ndarray]] = {}
        for key, parts in raw.items():
            out[str(key)] = {
                part: np.asarray(parts[part], dtype=np.float64).reshape(-1)[:3] for part in COMPONENTS
            }
    except Exception as err:  # noqa: BLE001  (unpickling, truncation, another layout: one answer)
        raise DataError(
            f"{p} is not a components file (image name → {', '.join(COMPONENTS)} boxes; make one with "
            f"`python -m train components`): {type(err).__name__}: {first_line(err)}"
        ) from None
    return out


def landmark_components(
    landmarks: np.ndarray, eye_scale: float = 0.2, mouth_scale: float = 0.55
) -> dict[str, np.ndarray]:
    """Component centres and half sizes from 5 landmarks (eyes, nose, mouth corners) in 512-px coordinates.

    Eye half size = ``eye_scale`` × inter-ocular distance, mouth half size = ``mouth_scale`` × mouth width.
    """
    t = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eye_dist = float(np.linalg.norm(t[1] - t[0]))
    mouth_width = float(np.linalg.norm(t[4] - t[3]))
    mouth = (t[3] + t[4]) / 2
    return {
        "left_eye": np.array([t[0, 0], t[0, 1], eye_scale * eye_dist]),
        "right_eye": np.array([t[1, 0], t[1, 1], eye_scale * eye_dist]),
        "mouth": np.array([mouth[0], mouth[1], mouth_scale * mouth_width]),
    }


def template_components() -> dict[str, np.ndarray]:
    """Components of a perfectly aligned face: those of the FFHQ 5-point template itself."""
    return landmark_components(FFHQ_TEMPLATE_512)


def _detector(name: str, weights_dir: str | None) -> torch.nn.Module:
    """The RetinaFace detector ``name`` with its weights (strict), ready for inference."""
    return load_model(detector_entry(name).name, weights_dir)


def _bgr(path: Path) -> np.ndarray:
    """An image file as BGR float32 with 8-bit values (16-bit scaled down, gray expanded, alpha dropped)."""
    try:
        img = read_image(path)
    except ImageReadError as err:
        raise DataError(str(err)) from err
    img = img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return (img[..., :3] / 257.0 if img.dtype == np.uint16 else img[..., :3]).astype(np.float32)


def detect_components(
    folder: str | Path, detector: str = "retinaface_resnet50", weights_dir: str | None = None
) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Components of every face in ``folder`` from RetinaFace's 5 landmarks (for datasets without a file).

    Returns the components by image stem (512-px coordinates, whatever the image size) and the stems where
    no face was found (the dataset then needs the template for those, or they should be removed).
    """
    net = _detector(detector, weights_dir)
    found: dict[str, dict[str, np.ndarray]] = {}
    missed: list[str] = []
    for path in tqdm(list_images(folder), desc="landmarks", unit="face"):
        img = _bgr(path)
        faces = detect_faces(net, img, only_center_face=True)
        if len(faces) == 0:
            missed.append(path.stem)
            continue
        found[path.stem] = landmark_components(faces.landmarks[0] * (512.0 / img.shape[1]))
    return found, missed


def crop_faces(
    photos: str | Path,
    out: str | Path,
    size: int = 512,
    min_size: int = 384,
    detector: str = "retinaface_resnet50",
    weights_dir: str | None = None,
) -> tuple[list[Path], int]:
    """Aligned ``size``² faces cut from the whole photos in ``photos``, as PNGs in ``out``: more faces.

    A face is kept when its aligned crop covers at least ``min_size`` pixels of the photo (smaller ones
    would be enlarged, and a blurred ground truth teaches blur) and lies at least 95 % inside it (the rest
    would be flat border). Each face is warped at its own resolution and then area-shrunk, so nothing
    aliases. Faces are written as ``STEM_NN.png``; two photos of one stem are refused before any work.
    Returns the written files and the number of faces skipped.
    """
    files = list_images(photos)
    if same_folder(out, photos):  # a face STEM_NN.png would replace a photo of that name, and be cut again
        raise DataError(f"{out} is the photo folder: give the faces a folder of their own")
    # before the detector loads: a face of one photo would replace another's
    _one_per_stem(files, "{}_NN.png")
    net = _detector(detector, weights_dir)
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped = 0
    for path in tqdm(files, desc="faces", unit="photo"):
        img = _bgr(path)
        found = detect_faces(net, img, max_side=1280)
        for k, points in enumerate(found.landmarks):
            matrix = alignment_matrix(points, size)
            native = size / math.sqrt(abs(np.linalg.det(matrix[:, :2])))  # photo pixels across the crop
            warp_size = min(max(size, round(native)), 2 * size)
            matrix = alignment_matrix(points, warp_size)
            inside = cv2.warpAffine(np.ones(img.shape[:2], np.float32), matrix, (warp_size, warp_size))
            if native < min_size or inside.mean() < 0.95:
                skipped += 1
                continue
            face = cv2.warpAffine(img, matrix, (warp_size, warp_size), flags=cv2.INTER_LINEAR)
            dest = target / f"{path.stem}_{k:02d}.png"
            cv2.imwrite(str(dest), np.clip(resize_aligned(face, size).round(), 0, 255).astype(np.uint8))
            written.append(dest)
    return written, skipped


def save_component_file(components: dict[str, dict[str, np.ndarray]], path: str | Path) -> Path:
    """Write components in the official file's structure, as tensors (loads with ``weights_only=True``)."""
    data = {
        stem: {part: torch.as_tensor(np.asarray(v, dtype=np.float64)) for part, v in parts.items()}
        for stem, parts in components.items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def component_boxes(
    parts: dict[str, np.ndarray], out_size: int, flipped: bool, eye_enlarge_ratio: float
) -> dict[str, torch.Tensor]:
    """[x1, y1, x2, y2] boxes at ``out_size`` (official formula: centre ± half, +1 on the top-left)."""
    if flipped:  # the subject's eyes swap sides
        parts = {"left_eye": parts["right_eye"], "right_eye": parts["left_eye"], "mouth": parts["mouth"]}
    scale = out_size / 512.0
    boxes = {}
    for name in COMPONENTS:
        x, y, half = (float(v) for v in parts[name])
        if flipped:
            x = 512.0 - x
        if "eye" in name:
            half *= eye_enlarge_ratio
        box = np.array([x - half + 1, y - half + 1, x + half, y + half]) * scale
        boxes[name] = torch.from_numpy(box).float()
    return boxes


# ------------------------------------------------------------------------------------------ degradation
@dataclass
class DegradationParams:
    """Everything random about one degradation, drawn up front (so it can be checked and replayed)."""

    kernel_type: str
    sigma_x: float
    sigma_y: float
    rotation: float
    scale: float
    noise_sigma: float | None
    jpeg_quality: int | None
    color_shift: np.ndarray | None  # per-channel, /255 units already divided
    gray: bool
    pt_jitter: list[tuple[str, float]]  # (op, factor) in application order


def sample_degradation(cfg: dict[str, Any], rng: np.random.Generator) -> DegradationParams:
    """Draw one set of degradation parameters from the configured ranges."""
    kinds = list(cfg["kernel_list"])
    probs = np.asarray(cfg["kernel_prob"], dtype=np.float64)
    kernel_type = str(kinds[rng.choice(len(kinds), p=probs / probs.sum())])
    lo, hi = cfg["blur_sigma"]
    sigma_x = float(rng.uniform(lo, hi))
    if kernel_type == "aniso":
        sigma_y = float(rng.uniform(lo, hi))
        rotation = float(rng.uniform(-math.pi, math.pi))
    else:
        sigma_y, rotation = sigma_x, 0.0
    scale = float(rng.uniform(*cfg["downsample_range"]))
    noise = None if cfg["noise_range"] is None else float(rng.uniform(*cfg["noise_range"]))
    # Truncated, as the official float quality was by the OpenCV of its time (today's refuses a float).
    jpeg = None if cfg["jpeg_range"] is None else int(rng.uniform(*cfg["jpeg_range"]))
    shift = None
    if cfg["color_jitter_prob"] is not None and rng.uniform() < cfg["color_jitter_prob"]:
        s = cfg["color_jitter_shift"] / 255.0
        shift = rng.uniform(-s, s, 3).astype(np.float32)
    gray = bool(cfg["gray_prob"]) and rng.uniform() < cfg["gray_prob"]
    pt_jitter: list[tuple[str, float]] = []
    if cfg["color_jitter_pt_prob"] is not None and rng.uniform() < cfg["color_jitter_pt_prob"]:
        for op in np.array(["brightness", "contrast", "saturation", "hue"])[rng.permutation(4)]:
            if cfg[str(op)] is not None:
                # float32, as the official draws it (torch.tensor(1.0).uniform_)
                pt_jitter.append((str(op), float(np.float32(rng.uniform(*cfg[str(op)])))))
    return DegradationParams(
        kernel_type, sigma_x, sigma_y, rotation, scale, noise, jpeg, shift, gray, pt_jitter
    )


_JITTER_OPS = {
    "brightness": TF.adjust_brightness,
    "contrast": TF.adjust_contrast,
    "saturation": TF.adjust_saturation,
    "hue": TF.adjust_hue,
}


def degrade(
    img_gt: np.ndarray, params: DegradationParams, cfg: dict[str, Any], rng: np.random.Generator
) -> np.ndarray:
    """HQ BGR float32 [0, 1] (HxWx3) → LQ of the same size, also BGR float32 [0, 1].

    The whole training degradation (blur, shrink, noise, JPEG, enlarge, colour shift, gray, colour jitter),
    so that ``evaluate --degrade`` draws from exactly the distribution the models were trained on.
    """
    h, w = img_gt.shape[:2]
    kernel = degradations.bivariate_Gaussian(
        cfg["blur_kernel_size"], params.sigma_x, params.sigma_y, params.rotation,
        isotropic=params.kernel_type == "iso",
    )  # fmt: skip
    img = cv2.filter2D(img_gt, -1, kernel)
    small = (max(1, int(w // params.scale)), max(1, int(h // params.scale)))
    img = cv2.resize(img, small, interpolation=cv2.INTER_LINEAR)
    if params.noise_sigma is not None:
        img = np.clip(
            img + rng.standard_normal(img.shape).astype(np.float32) * params.noise_sigma / 255.0, 0, 1
        )
    if params.jpeg_quality is not None:
        img = _jpeg(img, params.jpeg_quality)
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    if params.color_shift is not None:
        img = np.clip(img + params.color_shift, 0, 1)
    if params.gray:
        img = np.tile(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None], (1, 1, 3))
    if params.pt_jitter:  # torchvision's brightness/contrast/saturation/hue on RGB, as the official dataset
        rgb = _to_tensor(img)
        for op, factor in params.pt_jitter:
            rgb = _JITTER_OPS[op](rgb, factor)
        img = np.ascontiguousarray(rgb.numpy().transpose(1, 2, 0)[:, :, ::-1])
    return img.astype(np.float32, copy=False)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip at ``quality`` (as basicsr's add_jpg_compression, quantised to uint8 explicitly)."""
    img8 = (np.clip(img, 0, 1) * 255.0).round().astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img8, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise DataError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR).astype(np.float32) / 255.0


def _to_tensor(img_bgr: np.ndarray) -> torch.Tensor:
    """BGR HWC [0, 1] → RGB CHW [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img_bgr[:, :, ::-1].transpose(2, 0, 1))).float()


_BGR_TO_GRAY = np.array([0.114, 0.587, 0.299])  # OpenCV's weights (COLOR_BGR2GRAY)


def augment(
    img: np.ndarray, parts: dict[str, np.ndarray], cfg: dict[str, Any], rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """New faces from few: a small random similarity warp (the component boxes follow it) and colour change
    of the HQ face before it is degraded, so LQ and GT change together. Ranges come from ``data.augment``."""
    size = img.shape[0]
    angle = float(rng.uniform(-1, 1)) * cfg["rotation"]
    scale = float(rng.uniform(*cfg["scale"]))
    shift = rng.uniform(-1, 1, 2) * cfg["shift"] * size
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    matrix[:, 2] += shift
    if angle or scale != 1 or shift.any():
        img = cv2.warpAffine(
            img, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        to512 = size / 512.0
        moved = {}
        for name, (x, y, half) in parts.items():
            cx, cy = matrix @ np.array([x * to512, y * to512, 1.0])
            moved[name] = np.array([cx / to512, cy / to512, half * scale])
        parts = moved
    if cfg["gray_prob"] and rng.uniform() < cfg["gray_prob"]:
        img = np.repeat(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None], 3, axis=2)
    elif cfg["color"]:
        c = cfg["color"]
        saturation, contrast, brightness = (1 + c * rng.uniform(-1, 1, 3)).tolist()
        balance = 1 + 0.5 * c * rng.uniform(-1, 1, 3)  # white balance: a gain per channel
        # Saturation around each pixel's grey, contrast around the image's mean, brightness, white balance:
        # together one affine map of each pixel's BGR values, applied in one pass.
        saturate = saturation * np.eye(3) + (1 - saturation) * _BGR_TO_GRAY
        mean = float(np.mean(saturate @ np.array(cv2.mean(img)[:3])))  # of the saturated face
        matrix = np.hstack([contrast * saturate, np.full((3, 1), mean * (brightness - contrast))])
        img = cv2.transform(img, balance[:, None] * matrix)
    return np.clip(img, 0, 1).astype(np.float32, copy=False), parts


def _to_hwc(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.numpy().transpose(1, 2, 0))


def _from_hwc(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


# ---------------------------------------------------------------------------------------------- dataset
class FaceDegradationDataset(Dataset):
    """HQ faces from a folder or lmdb, degraded on the fly; items are dicts of tensors in [-1, 1].

    Index with an int (validation: fixed seed per image) or with a ``(index, seed)`` tuple from
    :class:`ResumableSampler` (training: seed identifies epoch, rank and position).
    """

    def __init__(
        self,
        root: str | Path,
        data_cfg: dict[str, Any],
        degradation_cfg: dict[str, Any],
        indices: list[int] | None = None,
        train: bool = True,
        extra: list[str | Path] | tuple = (),
        source: ImageSource | None = None,
    ) -> None:
        # ``source``: the ImageSource of ``root`` and ``extra`` when the caller has it (a folder of 70,000
        # faces on shared storage is listed once, not once per dataset)
        self.source = source if source is not None else ImageSource(root, extra)
        self.indices = list(range(len(self.source))) if indices is None else list(indices)
        if not self.indices:
            raise DataError(f"no training images left in {root} after holding out validation images")
        self.out_size = int(data_cfg["out_size"])
        # Degrade at this size, then shrink LQ and GT to out_size the way inference shrinks an aligned face.
        self.degrade_size = int(data_cfg.get("degrade_size") or self.out_size)
        self.cache: dict[int, np.ndarray] | None = {} if data_cfg.get("cache_images") else None
        self.hflip = bool(data_cfg["use_hflip"]) and train
        aug = data_cfg.get("augment") or {}
        # Off unless some range is set (scale [1, 1] is none): a no-op augment would still use up draws.
        on = any(v for k, v in aug.items() if k != "scale") or list(aug.get("scale", [1, 1])) != [1, 1]
        self.augment = aug if train and on else None
        self.deg = degradation_cfg
        comp = data_cfg["components"]
        self.eye_enlarge = float(comp["eye_enlarge_ratio"])
        # Validation items carry no component boxes: nothing reads them, and a data.val face need not be in
        # the components file, whose keys are the training faces' (the file is read once, for training).
        self.train = train
        self.components = load_component_file(comp["file"]) if comp["source"] == "file" and train else None
        self.template = template_components()

    def _read(self, source_index: int) -> np.ndarray:
        """HQ face at ``degrade_size`` (BGR float32), decoded once per worker when ``cache_images`` is set."""
        if self.cache is not None and source_index in self.cache:
            return self.cache[source_index]
        img = square_resized(
            self.source.read(source_index), self.degrade_size, self.source.stem(source_index)
        )
        if self.cache is not None:
            self.cache[source_index] = img
        return img

    def __len__(self) -> int:
        return len(self.indices)

    def stored_size(self) -> tuple[int, int]:
        """(width, height) of the first image as stored, before any resize."""
        height, width = self.source.read(self.indices[0]).shape[:2]
        return width, height

    def _parts(self, source_index: int) -> dict[str, np.ndarray]:
        if self.components is None:
            return self.template
        stem = self.source.stem(source_index)
        for key in (stem, f"{int(stem):08d}" if stem.isdigit() else stem, f"{source_index:08d}"):
            if key in self.components:
                return self.components[key]
        raise DataError(f"no facial components for image {stem!r} in the components file")

    def __getitem__(self, item: int | tuple[int, tuple[int, ...]]) -> dict[str, Any]:
        index, seed = (item, (0xFACE, item)) if isinstance(item, int) else item
        rng = np.random.default_rng(list(seed))
        source_index = self.indices[index]
        img_gt = self._read(source_index)
        parts = self._parts(source_index) if self.train else self.template
        if self.augment is not None:
            img_gt, parts = augment(img_gt, parts, self.augment, rng)
        flipped = self.hflip and rng.uniform() < 0.5
        if flipped:
            img_gt = np.ascontiguousarray(img_gt[:, ::-1])
        params = sample_degradation(self.deg, rng)
        img_lq = degrade(img_gt, params, self.deg, rng)
        if params.gray and self.deg.get("gt_gray"):
            img_gt = np.tile(cv2.cvtColor(img_gt, cv2.COLOR_BGR2GRAY)[:, :, None], (1, 1, 3))
        gt, lq = _to_tensor(img_gt), _to_tensor(img_lq)  # new tensors: changed in place below
        lq = lq.mul_(255.0).round_().clamp_(0, 255).div_(255.0)  # the official 8-bit rounding
        if self.degrade_size != self.out_size:  # as an 8-bit LQ file at degrade_size would be shrunk
            lq = _from_hwc(resize_aligned(_to_hwc(lq * 255.0), self.out_size).round() / 255.0)
            gt = _from_hwc(resize_aligned(_to_hwc(gt), self.out_size))
        out: dict[str, Any] = {
            "lq": lq.mul_(2).sub_(1),
            "gt": gt.mul_(2).sub_(1),
            "path": self.source.stem(source_index),
        }
        if self.train:
            boxes = component_boxes(parts, self.out_size, flipped, self.eye_enlarge)
            out.update({f"loc_{k}": v for k, v in boxes.items()})
        return out


def split_indices(count: int, holdout: int) -> tuple[list[int], list[int]]:
    """Training and validation indices: the last ``holdout`` items (sorted order) are held out."""
    if holdout < 0 or holdout >= count:
        raise DataError(f"data.val_holdout must be in [0, {count - 1}] for {count} images, got {holdout}")
    return list(range(count - holdout)), list(range(count - holdout, count))


class ResumableSampler(Sampler):
    """Endless shuffled stream of ``(index, seed)`` for one rank, starting at any position.

    Epoch ``e`` uses permutation ``seed + e``, split round-robin across ranks (padded by wrap-around so
    every rank sees the same count); position ``p`` of a rank is fully determined, so resuming at
    ``start = step × batch_size`` replays exactly the samples a straight run would have drawn.
    """

    def __init__(
        self, length: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0
    ) -> None:
        self.length, self.seed, self.rank, self.world, self.start = length, seed, rank, world_size, start
        self.per_rank = math.ceil(length / world_size)

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 1 << 62

    def __iter__(self) -> Iterator[tuple[int, tuple[int, ...]]]:
        position = self.start
        while True:
            epoch, offset = divmod(position, self.per_rank)
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.length, generator=g).tolist()
            total = self.per_rank * self.world  # wrapped around as often as it takes (more ranks than faces)
            perm = (perm * math.ceil(total / self.length))[:total]
            mine = perm[self.rank :: self.world]
            for k in range(offset, self.per_rank):
                yield mine[k], (self.seed, epoch, self.rank, k)
            position = (epoch + 1) * self.per_rank


def square_resized(img: np.ndarray, size: int, name: str) -> np.ndarray:
    """An aligned face at ``size``² (area-averaged down, cubic up); a face that is not square is refused,
    since squeezing it to a square would train on a distorted face."""
    height, width = img.shape[:2]
    if height != width:
        raise DataError(
            f"{name} is {width}x{height}, not a square aligned face (python -m train crop aligns photos)"
        )
    if height == size:
        return img
    interp = cv2.INTER_AREA if height > size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


def prepare_folder(src: str | Path, dst: str | Path, size: int, lmdb: bool = False) -> Path:
    """Resize every aligned face in ``src`` to ``size``² PNGs in ``dst`` (or, with ``lmdb``, into one
    ``dst``.lmdb only: no folder of PNGs beside it).

    Training at a size below the stored one (FFHQ/CelebA-HQ are 1024 px) otherwise decodes and resizes
    every image on every step. An output that holds images already is refused: their faces would be
    overwritten or trained on beside the new ones.
    """
    if size < 1:
        raise DataError(f"the size must be a positive number of pixels, got {size}")
    files = list_images(src)
    out = Path(dst)
    target = (out if out.suffix == ".lmdb" else out.with_suffix(".lmdb")) if lmdb else out
    if same_folder(target, src):
        raise DataError(f"{dst} is the source folder: the resized faces would replace the originals")
    _one_per_stem(files, "{}.png")
    if lmdb:
        _refuse_existing(target)
    elif target.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in target.iterdir()):
        raise DataError(
            f"{target} already holds images: give an empty or new folder (they would be overwritten or "
            "trained on beside the new faces)"
        )
    check_faces(files)  # a bad file late in the folder would leave part of the output written

    def resized() -> Iterator[tuple[str, np.ndarray]]:
        for p in tqdm(files, desc="resize", unit="img"):
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                raise DataError(f"unreadable image: {p}")
            yield p.stem, square_resized(img, size, p.name)

    if lmdb:  # PNG never larger than twice its 8-bit BGR pixels, rows and headers included
        return _pack_lmdb(resized(), target, len(files) * 2 * (3 * size * size + size + 4096), 1)
    made = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for stem, img in resized():
            written.append(target / f"{stem}.png")
            cv2.imwrite(str(written[-1]), img)
    except BaseException:  # a face that fails to decode, Ctrl-C: no part-done folder that blocks a rerun
        for path in written:
            path.unlink(missing_ok=True)
        if made and not any(target.iterdir()):
            target.rmdir()
        raise
    return target
