"""The networks: shapes, counts, init, torchvision compatibility, towers."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from alexnet import create_model, list_models
from alexnet.cli import main
from alexnet.commands.summary import summarize
from alexnet.models import get_model_info

VARIANTS = list_models()


def test_list_models() -> None:
    assert VARIANTS == ["alexnet", "alexnet_bn", "alexnet_owt"]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("num_classes", [10, 1000])
def test_output_shape_and_finite(name: str, num_classes: int) -> None:
    model = create_model(name, num_classes=num_classes).eval()
    size = get_model_info(name).input_size
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = create_model(name, num_classes=5, init="kaiming")
    size = get_model_info(name).min_input_size + 30
    model(torch.randn(2, 3, size, size)).logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", VARIANTS)
def test_params_and_macs_match_metadata(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    info = get_model_info(name)
    model = create_model(name)
    live_params = sum(p.numel() for p in model.parameters())
    assert main(["summary", "--model", name, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["params"] == live_params
    assert s["macs"] == sum(layer["macs"] for layer in s["layers"])
    if info.params_1k is not None:
        assert live_params == info.params_1k
        assert s["macs"] == info.macs_native


def test_published_numbers() -> None:
    assert get_model_info("alexnet").params_1k == 60_965_224
    assert get_model_info("alexnet").macs_native == 724_406_816
    assert get_model_info("alexnet_owt").params_1k == 61_100_840
    assert get_model_info("alexnet_owt").macs_native == 714_188_480


def test_seed_output_size_table() -> None:
    s = summarize("alexnet")
    shown = [tuple(r["output_shape"]) for r in s["layers"] if r["type"] in ("Conv2d", "MaxPool2d", "Linear")]
    hwc = [(h, w, c) for c, h, w in (x for x in shown if len(x) == 3)]
    assert hwc == [
        (55, 55, 96),
        (27, 27, 96),
        (27, 27, 256),
        (13, 13, 256),
        (13, 13, 384),
        (13, 13, 384),
        (13, 13, 256),
        (6, 6, 256),
    ]
    assert [x for x in shown if len(x) == 1] == [(4096,), (4096,), (1000,)]


def test_summary_json_layers_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--json", "--model", "alexnet_bn", "--input-size", "131", "--num-classes", "7"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["model"], s["input_size"], s["num_classes"]) == ("alexnet_bn", 131, 7)
    types = [layer["type"] for layer in s["layers"]]
    assert types.count("Conv2d") == 5 and types.count("BatchNorm2d") == 5 and types.count("Linear") == 3
    for layer in s["layers"]:
        assert set(layer) >= {"name", "type", "output_shape", "params", "macs"}


def test_summary_table_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "55x55x96" in out and "60,965,224" in out and "724,406,816" in out


def test_paper_init_statistics() -> None:
    torch.manual_seed(0)
    model = create_model("alexnet", init="paper")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for m in convs + fcs:
        assert abs(m.weight.std().item() - 0.01) < 0.0015
        assert abs(m.weight.mean().item()) < 0.002
    bias_values = [m.bias.unique().tolist() for m in convs + fcs]
    # conv1..conv5, fc6, fc7, fc8
    assert bias_values == [[0.0], [1.0], [0.0], [1.0], [1.0], [1.0], [1.0], [0.0]]


@pytest.mark.parametrize("name", VARIANTS)
def test_kaiming_init_has_zero_biases(name: str) -> None:
    model = create_model(name, init="kaiming")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            assert m.bias.abs().max() == 0


def test_unknown_init_and_model_raise() -> None:
    with pytest.raises(ValueError, match="unknown init"):
        create_model("alexnet", init="xavier")
    with pytest.raises(ValueError, match="unknown model"):
        create_model("vgg16")


def test_torchvision_state_dict_round_trip() -> None:
    tv = pytest.importorskip("torchvision").models.alexnet()
    ours = create_model("alexnet_owt")
    ours.load_state_dict(tv.state_dict(), strict=True)
    tv.eval(), ours.eval()
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in tv.state_dict().items()}


def test_a_network_built_from_its_weights() -> None:
    """model_from_state (every command that reads weights) builds without initialising: the same network as
    copying the weights in, fp32 and contiguous whatever the file stores, trainable, a misfit named by its
    tensor."""
    from alexnet.errors import UserError
    from alexnet.io.weights import model_from_state

    torch.manual_seed(0)
    ref = create_model("alexnet_bn", 10, init="kaiming")
    ref(torch.randn(4, 3, 67, 67)).sum().backward()  # BatchNorm's running statistics move off their defaults
    ref.to(memory_format=torch.channels_last)  # as a run's checkpoint holds its conv weights
    half = {k: v.half() if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    copied = create_model("alexnet_bn", 10)
    copied.load_state_dict(half)
    built = model_from_state("alexnet_bn", 10, half, {})
    assert {p.dtype for p in built.state_dict().values() if p.is_floating_point()} == {torch.float32}
    assert all(p.requires_grad and p.is_contiguous() and not p.is_meta for p in built.parameters())
    x = torch.randn(3, 3, 67, 67)
    with torch.no_grad():
        assert torch.equal(built.eval()(x), copied.eval()(x))
    with pytest.raises(UserError, match=r"10 classes: size mismatch for classifier\.fc8\.weight"):
        model_from_state("alexnet_bn", 10, create_model("alexnet_bn", 12).state_dict(), {})


@pytest.mark.parametrize("name", VARIANTS)
def test_min_input_size(name: str) -> None:
    model = create_model(name, num_classes=3).eval()
    minimum = get_model_info(name).min_input_size
    with torch.no_grad():
        assert model(torch.randn(1, 3, minimum, minimum)).shape == (1, 3)
        assert model(torch.randn(1, 3, 300, 260)).shape == (1, 3)  # non-native, non-square
        with pytest.raises(ValueError, match=f"at least {minimum}x{minimum}"):
            model(torch.randn(1, 3, minimum - 1, minimum))


def test_fc7_features() -> None:
    model = create_model("alexnet", num_classes=10).eval()
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        assert feats.shape == (2, 4096)
        assert torch.allclose(model.classifier.fc8(feats), model(x))


def _conv2_out(model: nn.Module, after_conv1: torch.Tensor) -> torch.Tensor:
    f = model.features
    return f.conv2(f.pool1(f.norm1(f.relu1(after_conv1))))


def test_towers_are_separate_until_conv3() -> None:
    torch.manual_seed(0)
    model = create_model("alexnet", init="kaiming").eval()
    f = model.features
    with torch.no_grad():
        a1 = f.conv1(torch.randn(1, 3, 227, 227))  # (1, 96, 55, 55)
        perturbed = a1.clone()
        perturbed[:, :48] += torch.randn_like(perturbed[:, :48])  # tower A's half only
        c2, c2p = _conv2_out(model, a1), _conv2_out(model, perturbed)
        assert torch.equal(c2[:, 128:], c2p[:, 128:])  # tower B's conv2 maps unchanged
        assert not torch.allclose(c2[:, :128], c2p[:, :128])  # tower A's did change

        def to_conv3(x: torch.Tensor) -> torch.Tensor:
            return f.conv3(f.pool2(f.norm2(f.relu2(x))))

        c3, c3p = to_conv3(c2), to_conv3(c2p)
        assert not torch.allclose(c3[:, 192:], c3p[:, 192:])  # conv3 mixes both towers

        # conv4/conv5 again keep the halves apart
        x = f.relu3(c3)
        xp = x.clone()
        xp[:, :192] += 1.0
        assert torch.equal(f.conv4(x)[:, 192:], f.conv4(xp)[:, 192:])


def test_lrn_is_configurable() -> None:
    model = create_model("alexnet", lrn_k=1.0, lrn_alpha=2e-4, lrn_size=3)
    lrn = model.features.norm1
    assert (lrn.k, lrn.alpha, lrn.size, lrn.beta) == (1.0, 2e-4, 3, 0.75)
    with pytest.raises(ValueError, match="bad option"):
        create_model("alexnet_owt", lrn_k=1.0)


@pytest.mark.parametrize("name", VARIANTS)
def test_dropout_masks_follow_the_sample_not_the_batch(name: str) -> None:
    """Keyed dropout: a sample's mask is the same whichever batch (or DDP rank) holds it; compiled once."""
    from torch._dynamo.testing import CompileCounter

    from alexnet.data import keyed_random
    from alexnet.models.layers import set_dropout_keys

    torch.manual_seed(0)
    model = create_model(name, num_classes=10, init="kaiming").train()
    for m in model.modules():  # BatchNorm's training statistics depend on the batch by design (see sync_bn)
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    size = get_model_info(name).min_input_size + 4
    x, keys = torch.randn(4, 3, size, size), keyed_random.keys(0, 0, torch.arange(4))
    set_dropout_keys(model, keys)
    whole = model(x)
    set_dropout_keys(model, keys[2:])
    torch.testing.assert_close(model(x[2:]), whole[2:], rtol=1e-5, atol=1e-6)
    set_dropout_keys(model, keyed_random.keys(0, 1, torch.arange(4)))  # another epoch: other masks
    assert not torch.allclose(model(x), whole)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    for epoch in range(3):  # new keys every step must not recompile (no graph breaks, no guards on them)
        set_dropout_keys(model, keyed_random.keys(0, epoch, torch.arange(4)))
        compiled(x)
    assert counter.frame_count == 1


@pytest.mark.parametrize("size", [(1, 1), (3, 3), (2, 5), (7, 7), (13, 13)])
def test_the_deterministic_pool_to_6x6_is_the_adaptive_pool(size: tuple[int, int]) -> None:
    """With deterministic algorithms on (train.deterministic), the pool before fc6 is two matrix products
    (PyTorch's CUDA backward of the adaptive pool has no deterministic kernel): the same values and gradients."""
    from alexnet.models.layers import pool_to_grid

    pool, x = nn.AdaptiveAvgPool2d((6, 6)), torch.randn(2, 4, *size, requires_grad=True)
    ref = pool(x)
    g = torch.randn_like(ref)
    (ref_grad,) = torch.autograd.grad(ref, x, g)
    torch.use_deterministic_algorithms(True)
    try:
        out = pool_to_grid(x, pool)
        (grad,) = torch.autograd.grad(out, x, g)
    finally:
        torch.use_deterministic_algorithms(False)
    assert out.grad_fn is not None and "AdaptiveAvgPool" not in type(out.grad_fn).__name__
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, ref_grad)
