"""Hybrid parallelism (convolutions data-parallel, fc6/fc7 sharded; hybrid.py) on 2 and 3 Gloo processes: the
same network as one process, checkpoints in the single-model form, resume across hybrid / DDP / one process."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from alexnet import create_model
from alexnet.cli import main
from alexnet.data import keyed_random
from alexnet.io import checkpoint as ckpt_io
from alexnet.models.layers import set_dropout_keys
from alexnet.parallel.distributed import global_batch_norm
from alexnet.parallel.hybrid import COMM, HybridAlexNet, grad_scaler, optimizer_state_full, optimizer_state_shard

from .test_distributed import COMMON, _assert_same_weights, _free_port, _torchrun

BATCH = 6  # global batch: 3 per rank on 2 processes, 2 on 3


def _steps(model: torch.nn.Module, opt: torch.optim.Optimizer, rows: slice, n: int = 3) -> None:
    """``n`` SGD steps on a fixed global batch, this process holding ``rows`` of it; dropout keyed per sample."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(BATCH, 3, 67, 67, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
    keys = keyed_random.keys(0, 0, torch.arange(BATCH))
    for _ in range(n):
        set_dropout_keys(model, keys[rows])
        opt.zero_grad()
        F.cross_entropy(model(x[rows]), y[rows]).backward()
        opt.step()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        for name in ("alexnet", "alexnet_bn", "alexnet_owt"):
            torch.manual_seed(0)
            ref = create_model(name, 10, dropout=0.5)
            opt_ref = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            if rank == 0:  # the one-process reference
                _steps(ref, opt_ref, slice(None))
            torch.manual_seed(0)
            hybrid = HybridAlexNet(global_batch_norm(create_model(name, 10, dropout=0.5)), dist.new_group())
            opt = torch.optim.SGD(hybrid.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            b = BATCH // world
            COMM.enabled, COMM.bytes = True, {}
            _steps(hybrid.ddp(None), opt, slice(rank * b, (rank + 1) * b))
            COMM.enabled = False
            full, want = hybrid.state_dict(), ref.state_dict()
            momentum = optimizer_state_full(hybrid, opt.state_dict())
            back = optimizer_state_shard(hybrid, momentum)["state"]
            results[name] = {
                "keys_equal": list(full) == list(want),
                "weights": max(float((full[k].float() - v.float()).norm() / (v.float().norm() + 1e-12))
                               for k, v in want.items()),
                "momentum": max([float((momentum["state"][i]["momentum_buffer"] - s["momentum_buffer"]).norm()
                                       / s["momentum_buffer"].norm()) for i, s in opt_ref.state_dict()["state"].items()]
                                or [0.0]),
                "round_trip": all(torch.equal(back[i]["momentum_buffer"], s["momentum_buffer"])
                                  for i, s in opt.state_dict()["state"].items()),
                "fc6_rows": hybrid.classifier.get_submodule(hybrid.names[0]).weight.shape[0],
                "comm": COMM.bytes, "local_batch": b,
            }  # fmt: skip
        Path(out, f"{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_hybrid_steps_equal_one_process(tmp_path: Path) -> None:
    """alexnet, alexnet_bn, alexnet_owt on 3 processes (the 4096 units split unevenly: 1365, 1365, 1366): the same
    global batch, dropout 0.5 keyed per sample, 3 SGD steps with momentum give one process's weights and momentum."""
    world = 3
    torch.multiprocessing.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world)
    for r in range(world):
        for name, res in json.loads((tmp_path / f"{r}.json").read_text()).items():
            assert res["keys_equal"], name  # the single model's state_dict, gathered
            if r == 0:
                assert res["weights"] < 1e-4 and res["momentum"] < 1e-4, (name, res)  # summation order only
            assert res["round_trip"], name
            assert res["fc6_rows"] == 4096 * (r + 1) // world - 4096 * r // world
            b, n = res["local_batch"], 3  # activation bytes as hybrid.py's docstring lays them out, 3 steps
            assert res["comm"]["all_gather"] == n * 4 * b * (9216 + 4096)  # pool5 forward, fc7-output grads back
            assert res["comm"]["reduce_scatter"] == n * 4 * world * b * (4096 + 9216)  # fc7 partials, pool5 grads
            assert res["comm"]["all_gather_keys"] == n * 8 * b  # one int64 dropout key per image


def _fp16_worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        hybrid = HybridAlexNet(create_model("alexnet_owt", 10, dropout=0.0), dist.new_group())
        model, opt, scaler = hybrid.ddp(None), torch.optim.SGD(hybrid.parameters(), lr=0.01), grad_scaler("cpu", True)
        fc6 = hybrid.classifier.get_submodule(hybrid.names[0]).weight
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(BATCH, 3, 67, 67, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
        rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        scales = []
        for step in range(3):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(model(x[rows]), y[rows])
            scaler.scale(loss).backward()
            if step == 1 and rank == 0:  # an overflow in rank 0's own fc6 rows, which no other rank holds
                fc6.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
        conv1 = hybrid.features[0].weight.detach()
        copies = [torch.empty_like(conv1) for _ in range(world)]
        dist.all_gather(copies, conv1)
        Path(out, f"{rank}.json").write_text(json.dumps({"scales": scales, "apart": [float((c - conv1).norm())
                                                                                      for c in copies]}))  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_an_fp16_overflow_on_one_rank_skips_the_step_on_every_rank(tmp_path: Path) -> None:
    """train.amp=fp16 (auto on V100/T4) with the loss scaler hybrid runs take: an inf in one rank's shard of fc6
    makes every rank skip that step and halve its scale, so the replicated layers stay one network."""
    world = 2
    torch.multiprocessing.spawn(_fp16_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world)
    res = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(world)]
    assert res[0]["scales"] == res[1]["scales"] and res[0]["scales"][2] == res[0]["scales"][0] / 2, res
    assert all(apart == 0.0 for r in res for apart in r["apart"]), res  # conv1 the same on both ranks


def test_hybrid_training_resumes_across_hybrid_and_one_process(tmp_path: Path) -> None:
    """hybrid epoch 1 -> one process epoch 2 -> hybrid epoch 3 equals 3 epochs in one process (the checkpoints
    are in the single-model form: DDP reads them as well); validation counts every image once."""
    from .conftest import make_imagefolder

    data = ["--data", str(make_imagefolder(tmp_path / "odd", classes=3, per_class=6, val_per_class=3))]
    full, hyb = tmp_path / "full", tmp_path / "hyb"
    assert main(["train", *data, "--out", str(full), *COMMON, "--epochs", "3"]) == 0
    res = _torchrun(2, ["train", *data, "--out", str(hyb), *COMMON, "--epochs", "1", "--parallel", "hybrid",
                        "--set", "train.checkpoint_every=2"])  # fmt: skip
    assert "world 2" in res.stderr and "(56,880,515 params)" in res.stderr  # the whole network's count
    assert ckpt_io.load(hyb / "checkpoints" / "last.pt")["model"]["classifier.fc6.weight"].shape == (4096, 9216)
    assert main(["train", "--resume", str(hyb), "--epochs", "2"]) == 0  # hybrid -> one process
    _assert_same_weights(full / "checkpoints" / "step-00000010.pt", hyb / "checkpoints" / "last.pt")
    _torchrun(2, ["train", "--resume", str(hyb), "--epochs", "3"])  # one process -> hybrid (from config.yaml)
    _assert_same_weights(full / "checkpoints" / "last.pt", hyb / "checkpoints" / "last.pt")
    rows = [[json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] for run in (full, hyb)]
    for r_full, r_hyb in zip(*rows, strict=True):
        assert r_full["val_n"] == r_hyb["val_n"] == 9  # every val image exactly once
        assert r_hyb["val_top1"] == r_full["val_top1"]
    image = next((tmp_path / "odd" / "val").rglob("*.png"))
    assert main(["predict", str(hyb), str(image), "--device", "cpu"]) == 0  # hybrid runs work unchanged


def test_hybrid_and_towers_are_refused_together(tiny_folder: Path, tmp_path: Path) -> None:
    assert main(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "x"), *COMMON, "--towers", "cpu,cpu",
                 "--parallel", "hybrid"]) == 2  # fmt: skip
    assert not (tmp_path / "x").exists()
