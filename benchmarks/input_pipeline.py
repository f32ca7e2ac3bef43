"""Input pipeline images/s per worker (one process, as each data-loader worker runs):
ours (prepared store; raw JPEGs) vs torchvision ImageFolder with PIL transforms (baseline).

    python benchmarks/input_pipeline.py [--data ../shared/data] [--n 400] [--reps 3]

Each pipeline produces training-ready batches of 224x224 normalised float tensors with random
crops and flips. Baseline: ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor
+ Normalize, per image. Ours (JPEG): decode + resize to 256 per image, then crop/flip/normalise on
the whole uint8 batch. Ours (store): read the uint8 batch from the store file (decoding was paid once
by `alexnet prepare`, not timed), then the same batched augmentation. JPEG store: the batch's JPEG bytes
decoded by TorchCodec (the decoder in use) or torchvision's deprecated decode_jpeg (the path before it), then
the same augmentation; a second table times the two decoders alone on the same bytes (and, where CUDA is
available, TorchCodec's nvJPEG decoding on the GPU, data.jpeg_decode=gpu). Every rate is the
median of --reps passes, the pipelines interleaved (baseline first in each pass) so drift hits all alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import table  # noqa: E402

from alexnet.data import keyed_random  # noqa: E402
from alexnet.data import store as store_mod  # noqa: E402
from alexnet.data.folder import FolderDataset, scan_folder  # noqa: E402
from alexnet.data.store import open_store, prepare  # noqa: E402
from alexnet.data.transforms import BatchAugment, Normalizer, resize_square  # noqa: E402


def as_imagefolder(flat: Path, tmp: Path) -> Path:
    """imagenet-samples is flat; link it into train/ and val/ class folders (one image per class)."""
    for split in ("train", "val"):
        for f in sorted(flat.glob("*.JPEG")):
            d = tmp / split / f.name.split("_")[0]
            d.mkdir(parents=True, exist_ok=True)
            (d / f.name).symlink_to(f.resolve())
    return tmp


def rate(fn, n: int) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def median_rates(
    pipelines: list[tuple[str, object]], n: int, reps: int, baseline_first: bool = True
) -> dict[str, float]:
    """Each pipeline's images/s, the median over ``reps`` interleaved passes, every other pass in reverse
    order (the baseline still first when ``baseline_first``)."""
    got: dict[str, list[float]] = {label: [] for label, _ in pipelines}
    backwards = pipelines[:1] + pipelines[:0:-1] if baseline_first else pipelines[::-1]
    for r in range(reps):
        for label, fn in pipelines if r % 2 == 0 else backwards:
            got[label].append(rate(fn, n))
    return {label: statistics.median(v) for label, v in got.items()}


def _torchvision_decode(blobs: list[torch.Tensor]) -> list[torch.Tensor]:
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(blobs, mode=ImageReadMode.RGB)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--n", type=int, default=400, help="images per measurement")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3, help="passes per pipeline; the median is reported")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one worker = one core
    import torchvision
    from torchvision import transforms as T

    root = Path(args.data)
    sets = {
        "imagenet-samples (~500x375 JPEG)": lambda tmp: as_imagefolder(root / "imagenet-samples", tmp),
        "imagenette (224x224 JPEG)": lambda tmp: root / "imagenette2-224",
    }
    rows = [["dataset", "pipeline", "img/s per worker", "vs baseline"]]
    decode_rows = [["dataset", "JPEG decoder (bytes -> uint8 RGB, batches of --batch)", "img/s", "vs torchvision"]]
    for name, get in sets.items():
        with tempfile.TemporaryDirectory() as tmp:
            folder = get(Path(tmp))
            if not (folder / "train").is_dir():
                print(f"skipping {name}: {folder} not found")
                continue
            base_tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                                 T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])  # fmt: skip
            tv = torchvision.datasets.ImageFolder(str(folder / "train"), base_tf)
            n = min(args.n, len(tv))
            idx = torch.randperm(len(tv), generator=torch.Generator().manual_seed(0))[:n].tolist()

            def baseline():
                for i in range(0, n, args.batch):
                    torch.stack([tv[j][0] for j in idx[i : i + args.batch]])

            norm = Normalizer(torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225]))
            aug = BatchAugment("paper", 224, norm, pca_std=0.0)
            ours_ds = FolderDataset(scan_folder(folder / "train", check=False), resize_square(256), 256)

            def ours_jpeg():
                for i in range(0, n, args.batch):
                    b = idx[i : i + args.batch]
                    x = torch.stack([ours_ds[j][0] for j in b])
                    aug(x, keyed_random.keys(0, 0, torch.tensor(b)))

            store = Path(tmp) / "store"
            prepare(str(folder), str(store), size=256, workers=2, progress=False)
            images, _, _ = open_store(store, "train")
            sidx = torch.tensor(idx)

            def ours_store():
                for i in range(0, n, args.batch):
                    b = sidx[i : i + args.batch]
                    aug(images[b], keyed_random.keys(0, 0, b))

            ours_store()  # warm the page cache, as in any epoch after the first
            jstore = Path(tmp) / "jstore"
            prepare(str(folder), str(jstore), size=256, fmt="jpeg", workers=2, progress=False)
            jimages, _, _ = open_store(jstore, "train")

            def jpeg_store(decoder):  # noqa: ANN001, ANN202
                def run() -> None:
                    real = store_mod.jpeg_decoder
                    store_mod.jpeg_decoder = lambda: decoder
                    try:
                        for i in range(0, n, args.batch):
                            b = sidx[i : i + args.batch]
                            aug(jimages[b], keyed_random.keys(0, 0, b))
                    finally:
                        store_mod.jpeg_decoder = real

                return run

            pipelines = [("torchvision ImageFolder + PIL (baseline)", baseline), ("ours, raw JPEG folder", ours_jpeg),
                         ("ours, prepared store", ours_store),
                         ("ours, JPEG store, torchvision decode_jpeg (before)", jpeg_store(_torchvision_decode)),
                         ("ours, JPEG store, decoder in use (TorchCodec)", jpeg_store(store_mod.jpeg_decoder()))]  # fmt: skip
            got = median_rates(pipelines, n, args.reps)
            base = got[pipelines[0][0]]
            rows += [[name, label, f"{r:.0f}", f"{r / base:.2f}x"] for label, r in got.items()]
            blobs = [torch.from_numpy(jimages.data[jimages.offsets[i] : jimages.offsets[i + 1]].copy()) for i in idx]
            decoders = [("torchvision decode_jpeg (before)", _torchvision_decode), (f"{store_mod.jpeg_decoder().backend} (in use)",
                        store_mod.jpeg_decoder())]  # fmt: skip
            if torch.cuda.is_available():  # data.jpeg_decode=gpu: one nvJPEG call per batch, waited for
                gpu = store_mod.jpeg_decoder("cuda")
                decoders.append(("TorchCodec on the GPU (nvJPEG; data.jpeg_decode=gpu)",
                                 lambda b: (gpu(b), torch.cuda.synchronize())[0]))  # fmt: skip
            dec = median_rates([(label, lambda d=d: [d(blobs[i : i + args.batch]) for i in range(0, n, args.batch)])
                                for label, d in decoders], n, max(args.reps, 5), baseline_first=False)  # fmt: skip
            tv_rate = dec[decoders[0][0]]
            decode_rows += [[name, label, f"{r:.0f}", f"{r / tv_rate:.2f}x"] for label, r in dec.items()]
    print(f"batch {args.batch}, {args.n} images per measurement, 1 thread, median of {args.reps} interleaved passes")
    print(table(rows))
    print()
    print(table(decode_rows))


if __name__ == "__main__":
    main()
