"""`alexnet explain`: where in one image the network looks: the occlusion map (Zeiler & Fergus 2014, §4.2),
drawn over the image. Computation and drawing live in ``occlusion.py``."""

from __future__ import annotations

from pathlib import Path

from ..data.classes import display_name
from ..data.images import ImageError, load_rgb
from ..data.transforms import resize_square
from ..engine.runlog import setup_logging
from ..errors import UserError
from ..inference import compute_path
from ..inference.occlusion import occlusion_map, overlay
from ..io.atomic import check_output
from ..io.weights import load_weights
from ..parallel.distributed import pick_device


def run_explain(weights: str, image: str, out: str, target: str | None = None, patch: int | None = None,
                stride: int | None = None, device: str = "auto", force: bool = False) -> int:  # fmt: skip
    setup_logging(verbose=False)
    dst = Path(out)
    if dst.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {dst}")
    check_output(dst, force)
    dev = pick_device(device)
    w = load_weights(weights, dev)
    try:
        img = resize_square(w.preprocess.resize)(load_rgb(image))  # uint8 (3, S, S)
    except ImageError as e:
        raise UserError(str(e)) from None
    c, off = w.preprocess.crop, (w.preprocess.resize - w.preprocess.crop) // 2
    x = w.preprocess.normalizer().to(dev)(img[None].to(dev))[0, :, off : off + c, off : off + c]
    path = compute_path(w.model, dev)
    try:
        m = occlusion_map(w.model, x.contiguous(), _class_index(target, w.class_names), patch, stride, amp=path.amp)
    except ValueError as e:  # the only one: a --patch larger than the crop
        raise UserError(f"--patch: {e}") from None
    name = display_name(w.class_names[m.target])
    overlay(img[:, off : off + c, off : off + c], m, f"{Path(image).name}: {name} (p = {m.base_prob:.3f})", dst)
    i, j = divmod(int(m.grid.argmin()), m.grid.shape[1])
    print(f"wrote {dst}: class {name!r} p = {m.base_prob:.3f} unoccluded; lowest p = {float(m.grid.min()):.3f} with "
          f"the {m.patch}px square at (y, x) = ({m.positions[i]}, {m.positions[j]}) of the {c}px crop")  # fmt: skip
    return 0


def _class_index(target: str | None, names: list[str]) -> int | None:
    """A class index or name (folder name, wnid or readable name); None: the top class."""
    if target is None:
        return None
    if target.isdigit() and int(target) < len(names):
        return int(target)
    for i, n in enumerate(names):
        if target in (n, display_name(n)):
            return i
    raise UserError(f"unknown class {target!r}; give an index 0-{len(names) - 1} or one of the model's class names")
