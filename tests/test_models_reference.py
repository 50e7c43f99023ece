"""Parity with the reference U-Net/UCTransNet: state-dict layout, parameter counts, an independent per-head
re-implementation of the forward pass, reference-format checkpoints, and the ``ablation models`` listing."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablation.cli import main
from ablation.config import CONNECTORS, ModelConfig
from ablation.errors import AblationError
from ablation.models import build_model, load_reference_checkpoint, model_summary, reference_model_config

REPO_ROOT = Path(__file__).resolve().parents[1]
# A copy of shared/reference/reference_state_dicts.json in the package, so CI checks the layout without it.
LAYOUT_FILE = REPO_ROOT / "ablation" / "models" / "reference_state_dicts.json"
UNET_PARAMETERS = 14_751_873
UCTRANSNET_PARAMETERS = 66_430_657
TINY = ModelConfig(base_channels=4, img_size=32, num_layers=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- an independent, plain re-implementation of the reference forward pass, on reference-named weights ----


def _conv_bn_relu(sd: dict, prefix: str, x: torch.Tensor, padding: int = 1) -> torch.Tensor:
    x = F.conv2d(x, sd[prefix + "conv.weight"], sd[prefix + "conv.bias"], padding=padding)
    norm = prefix + "norm."
    x = F.batch_norm(
        x, sd[norm + "running_mean"], sd[norm + "running_var"], sd[norm + "weight"], sd[norm + "bias"], False
    )
    return F.relu(x)


def _two_convs(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return _conv_bn_relu(sd, prefix + "nConvs.1.", _conv_bn_relu(sd, prefix + "nConvs.0.", x))


def _layer_norm(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[prefix + "weight"], sd[prefix + "bias"], eps=1e-6)


def _reference_cct(
    sd: dict, features: dict[int, torch.Tensor], config: ModelConfig
) -> dict[int, torch.Tensor]:
    """CCT with one loop per head and per level, as the paper describes it."""
    levels = sorted(features)
    emb = {}
    for level in levels:
        patch = config.patch_sizes[level - 1]
        prefix = f"mtc.embeddings_{level}."
        weight, bias = sd[prefix + "patch_embeddings.weight"], sd[prefix + "patch_embeddings.bias"]
        x = F.conv2d(features[level], weight, bias, stride=patch)
        emb[level] = x.flatten(2).transpose(1, 2) + sd[prefix + "position_embeddings"]
    for index in range(config.num_layers):
        p = f"mtc.encoder.layer.{index}."
        all_levels = _layer_norm(sd, p + "attn_norm.", torch.cat([emb[level] for level in levels], dim=2))
        kv_size = all_levels.shape[-1]
        attended = {}
        for level in levels:
            query_input = _layer_norm(sd, p + f"attn_norm{level}.", emb[level])
            contexts = []
            for head in range(config.num_heads):
                query = query_input @ sd[p + f"channel_attn.query{level}.{head}.weight"].T  # (B, N, C)
                key = all_levels @ sd[p + f"channel_attn.key.{head}.weight"].T  # (B, N, KV)
                value = all_levels @ sd[p + f"channel_attn.value.{head}.weight"].T  # (B, N, KV)
                scores = query.transpose(1, 2) @ key / math.sqrt(kv_size)  # (B, C, KV)
                mean = scores.mean(dim=(1, 2), keepdim=True)
                variance = scores.var(dim=(1, 2), unbiased=False, keepdim=True)
                probabilities = torch.softmax((scores - mean) / torch.sqrt(variance + 1e-5), dim=-1)
                contexts.append(probabilities @ value.transpose(1, 2))  # (B, C, N)
            context = torch.stack(contexts).mean(dim=0).transpose(1, 2)  # (B, N, C)
            attended[level] = context @ sd[p + f"channel_attn.out{level}.weight"].T
        for level in levels:
            x = emb[level] + attended[level]
            normed = _layer_norm(sd, p + f"ffn_norm{level}.", x)
            hidden = F.gelu(
                F.linear(normed, sd[p + f"ffn{level}.fc1.weight"], sd[p + f"ffn{level}.fc1.bias"])
            )
            emb[level] = x + F.linear(
                hidden, sd[p + f"ffn{level}.fc2.weight"], sd[p + f"ffn{level}.fc2.bias"]
            )
    fused = {}
    for level in levels:
        tokens = _layer_norm(sd, f"mtc.encoder.encoder_norm{level}.", emb[level])
        batch, count, channels = tokens.shape
        side = int(math.isqrt(count))
        grid = tokens.transpose(1, 2).reshape(batch, channels, side, side)
        grid = F.interpolate(grid, scale_factor=config.patch_sizes[level - 1], mode="nearest")
        fused[level] = _conv_bn_relu(sd, f"mtc.reconstruct_{level}.", grid, padding=0) + features[level]
    return fused


def _reference_forward(sd: dict, x: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Sigmoid output of the reference network (U-Net, or UCTransNet and its CCT-/CCA-only variants)."""
    encoded = [_conv_bn_relu(sd, "inc.", x)]
    for index in range(1, 5):
        encoded.append(_two_convs(sd, f"down{index}.", F.max_pool2d(encoded[-1], 2)))
    skips = {level: encoded[level - 1] for level in range(1, 5) if config.skips[level - 1] == "1"}
    if config.connector in ("cct", "uctransnet") and skips:
        skips = _reference_cct(sd, skips, config)
    x = encoded[4]
    for level in (4, 3, 2, 1):
        p = f"up{level}."
        if config.connector == "unet":
            up = F.conv_transpose2d(x, sd[p + "up.weight"], sd[p + "up.bias"], stride=2)
            parts = [up, skips[level]] if level in skips else [up]
        else:
            up = F.interpolate(x, scale_factor=2, mode="nearest")
            skip = skips.get(level)
            if skip is not None and config.connector in ("cca", "uctransnet"):
                gate_x = F.linear(
                    skip.mean(dim=(2, 3)), sd[p + "coatt.mlp_x.1.weight"], sd[p + "coatt.mlp_x.1.bias"]
                )
                gate_g = F.linear(
                    up.mean(dim=(2, 3)), sd[p + "coatt.mlp_g.1.weight"], sd[p + "coatt.mlp_g.1.bias"]
                )
                skip = F.relu(skip * torch.sigmoid((gate_x + gate_g) / 2)[:, :, None, None])
            parts = [skip, up] if skip is not None else [up]
        x = _two_convs(sd, p, torch.cat(parts, dim=1))
    return torch.sigmoid(F.conv2d(x, sd["outc.weight"], sd["outc.bias"]))


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, position embeddings and biases, so every forward term matters."""
    generator = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        noise = torch.randn(value.shape, generator=generator)
        if key.endswith("running_var"):
            state[key] = 0.5 + noise.abs()
        elif key.endswith(("running_mean", "bias", "position_embeddings")) or ".norm." in key:
            state[key] = value + 0.1 * noise
    model.load_state_dict(state)
    return model.eval()


def _tiny(connector: str, skips: str = "1111", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomised(build_model(dataclasses.replace(TINY, connector=connector, skips=skips)), seed)


@pytest.mark.parametrize("skips", ["1111", "1011", "0100"])
@pytest.mark.parametrize("connector", list(CONNECTORS))
def test_forward_matches_independent_reference_implementation(connector: str, skips: str) -> None:
    config = dataclasses.replace(TINY, connector=connector, skips=skips)
    model = _tiny(connector, skips)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = _reference_forward(model.state_dict(), x, config)
        torch.testing.assert_close(torch.sigmoid(model(x)), expected, rtol=1e-4, atol=1e-5)


# ---- layout and counts at base 64 (meta device: no memory, no arithmetic) ----


def _layout(name: str) -> dict[str, list[int]]:
    return json.loads(LAYOUT_FILE.read_text())[name]["state_dict"]


@pytest.mark.parametrize(
    ("connector", "name", "parameters"),
    [
        ("unet", "unet_base64", UNET_PARAMETERS),
        ("uctransnet", "uctransnet_base64_img224", UCTRANSNET_PARAMETERS),
    ],
)
def test_reference_layout_and_parameter_count(connector: str, name: str, parameters: int) -> None:
    with torch.device("meta"):
        model = build_model(ModelConfig(connector=connector, base_channels=64, img_size=224))
    assert sum(p.numel() for p in model.parameters()) == parameters
    ours = [(key, list(value.shape)) for key, value in model.state_dict().items()]
    assert ours == list(_layout(name).items())  # same keys, shapes and order
    assert model_summary(ModelConfig(connector=connector))["parameters"] == parameters


def test_vendored_layout_is_the_shared_reference(shared_reference: Path) -> None:
    shared = json.loads((shared_reference / "reference_state_dicts.json").read_text())
    assert json.loads(LAYOUT_FILE.read_text()) == shared
    assert shared["unet_base64"]["parameters"] == UNET_PARAMETERS
    assert shared["uctransnet_base64_img224"]["parameters"] == UCTRANSNET_PARAMETERS


def test_config_inferred_from_the_base64_reference_layout() -> None:
    meta = {
        key: torch.empty(shape, device="meta") for key, shape in _layout("uctransnet_base64_img224").items()
    }
    config = reference_model_config(meta)
    assert config == ModelConfig(connector="uctransnet", base_channels=64, img_size=224)
    with pytest.raises(AblationError, match="img_size=224"):
        reference_model_config(meta, img_size=256)
    unet = {key: torch.empty(shape, device="meta") for key, shape in _layout("unet_base64").items()}
    assert reference_model_config(unet) == ModelConfig(connector="unet", base_channels=64)


# ---- reference-format checkpoints ----


def _save_reference_checkpoint(model: nn.Module, path: Path, model_type: str) -> None:
    """The dict the reference training script saves, including a real Adam state."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    model(torch.rand(2, 3, 32, 32)).mean().backward()
    optimizer.step()
    model.eval()
    checkpoint = {
        "epoch": 7,
        "best_model": True,
        "model": model_type,
        "state_dict": model.state_dict(),
        "val_loss": 0.4321,
        "optimizer": optimizer.state_dict(),
    }
    torch.save(checkpoint, path)


@pytest.mark.parametrize(("connector", "model_type"), [("uctransnet", "UCTransNet"), ("unet", "UNet")])
def test_reference_checkpoint_file_loads(tmp_path: Path, connector: str, model_type: str) -> None:
    original = _tiny(connector)
    path = tmp_path / f"best_model-{model_type}.pth.tar"
    _save_reference_checkpoint(original, path, model_type)
    saved = torch.load(path, weights_only=True)["state_dict"]
    if connector == "uctransnet":  # the file holds the reference's per-head keys, not our stacked parameters
        assert "mtc.encoder.layer.0.channel_attn.query1.3.weight" in saved
        assert not any(key.endswith("_heads") for key in saved)

    loaded = load_reference_checkpoint(path, img_size=32)
    assert not loaded.training and loaded.channel_order == "BGR"
    assert isinstance(loaded, type(original)) and loaded.skips == "1111"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x), rtol=0, atol=0)
        expected = _reference_forward(saved, x, dataclasses.replace(TINY, connector=connector))
        torch.testing.assert_close(torch.sigmoid(loaded(x)), expected, rtol=1e-4, atol=1e-5)


def test_bare_and_data_parallel_state_dicts_load(tmp_path: Path) -> None:
    original = _tiny("uctransnet", "0111")
    x = torch.rand(1, 3, 32, 32)
    torch.save({f"module.{k}": v for k, v in original.state_dict().items()}, tmp_path / "bare.pth")
    for source in (tmp_path / "bare.pth", str(tmp_path / "bare.pth"), original.state_dict()):
        loaded = load_reference_checkpoint(source, img_size=32)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), original(x), rtol=0, atol=0)


def test_stacked_parameter_names_also_load() -> None:
    """Packed training may save ``named_parameters`` + buffers directly; those names load too."""
    original = _tiny("uctransnet")
    state = {**dict(original.named_parameters()), **dict(original.named_buffers())}
    assert "mtc.encoder.layer.0.channel_attn.key_heads" in state
    fresh = build_model(dataclasses.replace(TINY, connector="uctransnet"))
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh.state_dict(), original.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("skips", ["1111", "0101", "0000"])
@pytest.mark.parametrize("connector", list(CONNECTORS))
def test_connector_and_skips_are_inferred(connector: str, skips: str) -> None:
    config = dataclasses.replace(TINY, connector=connector, skips=skips, num_classes=3, in_channels=1)
    with torch.device("meta"):
        state = build_model(config).state_dict()
    inferred = reference_model_config(state, img_size=32)
    same_network = connector if skips != "0000" or connector == "unet" else "uctransnet"
    assert (inferred.connector, inferred.skips) == (same_network, skips)
    has_transformer = connector in ("cct", "uctransnet") and skips != "0000"
    assert (inferred.in_channels, inferred.num_classes) == (1, 3)
    assert inferred.num_layers == (2 if has_transformer else ModelConfig().num_layers)


def test_bad_checkpoints_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(AblationError, match="not found"):
        load_reference_checkpoint(tmp_path / "missing.pth.tar")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(AblationError, match="cannot read checkpoint"):
        load_reference_checkpoint(tmp_path / "garbage.pth")
    (tmp_path / "text.pth.tar").write_text("hello\n")  # torch.load raises KeyError on this one
    (tmp_path / "random.pth").write_bytes(bytes(range(7, 256)) * 4)
    for name in ("text.pth.tar", "random.pth", "garbage.pth"):
        with pytest.raises(AblationError) as caught:
            load_reference_checkpoint(tmp_path / name)
        message = str(caught.value)
        assert message.startswith(f"cannot read checkpoint {tmp_path / name}: not a PyTorch checkpoint (")
        assert "\n" not in message and "weights_only" not in message and len(message) < 250
    torch.save({"epoch": 3, "weights": [1, 2]}, tmp_path / "other.pth")
    with pytest.raises(AblationError, match="'state_dict' entry"):
        load_reference_checkpoint(tmp_path / "other.pth")
    with pytest.raises(AblationError, match="not a U-Net/UCTransNet state dict"):
        load_reference_checkpoint({"encoder.weight": torch.zeros(3)})
    state = _tiny("uctransnet").state_dict()
    with pytest.raises(AblationError, match="trained at img_size 32 .*: use --img-size 32"):
        load_reference_checkpoint(state)  # default img_size 224
    state["mtc.encoder.layer.0.ffn1.fc1.bias"] = torch.zeros(5)
    with pytest.raises(AblationError, match="do not fit"):
        load_reference_checkpoint(state, img_size=32)


# ---- summaries and the CLI ----


def _counted_flops(model: nn.Module, x: torch.Tensor) -> int:
    """2 x multiply-adds of every convolution, counted by hand from the layer shapes."""
    total = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.weight[0].numel() if isinstance(module, nn.Conv2d) else module.weight[0, 0].numel()
        if isinstance(module, nn.Conv2d):
            total += 2 * output.numel() * kernel  # out positions x (in channels x k x k)
        else:  # ConvTranspose2d: every input position scatters into out channels x k x k
            total += 2 * inputs[0].numel() * module.out_channels * kernel

    handles = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    ]
    with torch.no_grad():
        model.eval()(x)
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("skips", ["1111", "1010", "0000"])
def test_model_summary_counts_match_hand_counts(skips: str) -> None:
    config = dataclasses.replace(TINY, connector="unet", skips=skips)
    summary = model_summary(config)
    model = build_model(config)
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    assert summary["gflops"] == pytest.approx(
        _counted_flops(model, torch.rand(1, 3, 32, 32)) / 1e9, rel=1e-12
    )


def test_models_command_lists_all_variants(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--base-channels", "64", "--img-size", "224", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 64
    assert len({(r["connector"], r["skips"]) for r in records}) == 64
    by_variant = {(r["connector"], r["skips"]): r for r in records}
    assert by_variant["unet", "1111"]["parameters"] == UNET_PARAMETERS
    assert by_variant["uctransnet", "1111"]["parameters"] == UCTRANSNET_PARAMETERS
    assert all(r["gflops"] > 0 for r in records)
    assert by_variant["unet", "0000"]["gflops"] < by_variant["unet", "1111"]["gflops"]

    assert main(["models", "--img-size", "40"]) == 2
    assert "multiple of 16" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--img-size", "0"], ["--img-size", "-16"], ["--base-channels", "0"]])
def test_models_command_rejects_bad_sizes(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert ("model.img_size" if flags[0] == "--img-size" else "model.base_channels") in err


def test_gflops_keep_three_significant_digits() -> None:
    from ablation.models.cli import format_gflops

    assert [format_gflops(v) for v in (0.0123456, 0.001, 1.5, 12.345, 62165.2, 0.0)] == [
        "0.0123", "0.00100", "1.50", "12.3", "62165", "0",
    ]  # fmt: skip


def test_models_command_table(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The table layout, with two stand-in records (the full listing is checked above; it takes seconds)."""
    import ablation.models.summary as summary

    seen = {}

    def two_records(base: ModelConfig) -> list[dict]:
        seen["base"] = base
        return [
            {
                "connector": "unet",
                "skips": "0000",
                "skip_label": "none",
                "parameters": 1234567,
                "gflops": 1.5,
            },
            {
                "connector": "uctransnet",
                "skips": "1111",
                "skip_label": "all",
                "parameters": 7,
                "gflops": 12.345,
            },
        ]

    monkeypatch.setattr(summary, "all_model_summaries", two_records)
    assert main(["models", "--base-channels", "8", "--img-size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert seen["base"] == ModelConfig(base_channels=8, img_size=64)
    assert "64x64" in lines[0] and lines[1].split() == ["connector", "skips", "label", "parameters", "GFLOPs"]
    assert lines[2].split() == ["unet", "0000", "none", "1,234,567", "1.50"]
    assert lines[3].split() == ["uctransnet", "1111", "all", "7", "12.3"]
