"""All connectors x skip subsets on tiny CPU models: shapes, gradients, skip removal, runtime masking."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from ablation.config import CONNECTORS, ModelConfig
from ablation.errors import AblationError
from ablation.models import build_model
from ablation.skips import ALL_SUBSETS

TINY = ModelConfig(base_channels=4, img_size=32, num_classes=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(connector: str, skips: str = "1111", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(dataclasses.replace(TINY, connector=connector, skips=skips))


def images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def calibrate_batch_norm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set BatchNorm running statistics to those of ``x``, so a fresh tiny model is not degenerate in eval."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: after one batch, exactly its statistics
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@contextmanager
def noise_on_skip_path(model: nn.Module, level: int) -> Iterator[None]:
    """Add noise to encoder feature x_level on its way into the skip connection only.

    The encoder stage's output is perturbed, and the next (deeper) encoder stage is fed the clean output, so
    the noise can reach the output only through the skip connector of that level.
    """
    stage = (model.inc, model.down1, model.down2, model.down3)[level - 1]
    deeper = (model.down1, model.down2, model.down3, model.down4)[level - 1]
    clean: dict[str, torch.Tensor] = {}

    def perturb(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        clean["feature"] = output
        noise = torch.randn(output.shape, generator=torch.Generator().manual_seed(level))
        return output + 3.0 * noise

    def restore(module: nn.Module, inputs: tuple) -> tuple:
        return (clean["feature"],)

    handles = [stage.register_forward_hook(perturb), deeper.register_forward_pre_hook(restore)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture_decoder_skips(model: nn.Module) -> Iterator[dict[int, torch.Tensor | None]]:
    """Record the skip tensor each decoder block up1..up4 receives."""
    received: dict[int, torch.Tensor | None] = {}
    handles = []
    for level in range(1, 5):

        def record(module: nn.Module, args: tuple, level: int = level) -> None:
            received[level] = args[1] if len(args) > 1 else None

        handles.append(getattr(model, f"up{level}").register_forward_pre_hook(record))
    try:
        yield received
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("skips", ALL_SUBSETS)
@pytest.mark.parametrize("connector", list(CONNECTORS))
def test_variant_shapes_gradients_and_removed_skips(connector: str, skips: str) -> None:
    model = tiny_model(connector, skips)
    x = images()

    model.train()
    logits = model(x)
    assert logits.shape == (2, 2, 32, 32)
    assert torch.isfinite(logits).all()
    logits.square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} is built but unused"
        assert torch.isfinite(parameter.grad).all(), name

    calibrate_batch_norm(model, x)
    with torch.no_grad():
        reference = model(x)
        for level in range(1, 5):
            with noise_on_skip_path(model, level):
                perturbed = model(x)
            if skips[level - 1] == "0":
                assert torch.equal(perturbed, reference), f"removed skip L{level} changed the output"
            else:  # the perturbation does reach the output through a skip that is on
                assert not torch.allclose(perturbed, reference, atol=1e-4), f"skip L{level} has no influence"


@pytest.mark.parametrize("connector", list(CONNECTORS))
def test_removed_skip_has_no_decoder_channels(connector: str) -> None:
    full, removed = tiny_model(connector, "1111"), tiny_model(connector, "1011")
    assert full.up2.nConvs[0].conv.in_channels == 2 * 8
    assert removed.up2.nConvs[0].conv.in_channels == 8
    assert sum(p.numel() for p in removed.parameters()) < sum(p.numel() for p in full.parameters())
    with capture_decoder_skips(removed) as received, torch.no_grad():
        removed.eval()(images())
    assert received[2] is None and all(received[level] is not None for level in (1, 3, 4))


@pytest.mark.parametrize("connector", list(CONNECTORS))
def test_test_time_mask_zeroes_what_the_decoder_receives(connector: str) -> None:
    x = images()
    model = calibrate_batch_norm(tiny_model(connector), x)
    with torch.no_grad():
        unmasked = model(x)
        model.set_test_time_mask("1011")  # keep L1, L3, L4; zero L2
        with capture_decoder_skips(model) as received:
            masked = model(x)
        assert torch.count_nonzero(received[2]) == 0
        assert all(torch.count_nonzero(received[level]) > 0 for level in (1, 3, 4))
        assert not torch.allclose(masked, unmasked, atol=1e-5)

        with noise_on_skip_path(model, 2):
            masked_noisy = model(x)
        if connector in ("unet", "cca"):  # plain skips: a masked level's feature reaches nothing
            assert torch.equal(masked_noisy, masked)
        else:  # CCT: the masked level still informs the other levels through attention, before the mask
            assert not torch.allclose(masked_noisy, masked, atol=1e-5)

        model.set_test_time_mask("1111")
        assert torch.equal(model(x), unmasked)
        model.set_test_time_mask(None)
        assert model.test_time_mask is None and torch.equal(model(x), unmasked)


def test_test_time_mask_differs_from_structural_removal() -> None:
    masked = calibrate_batch_norm(tiny_model("unet", "1111"), images())
    masked.set_test_time_mask("L1+L3+L4")
    removed = tiny_model("unet", "1011").eval()
    # Same weights wherever the layouts agree; the masked model keeps its L2 decoder weights, fed zeros.
    removed.load_state_dict(
        {k: v for k, v in masked.state_dict().items() if not k.startswith("up2.")}, strict=False
    )
    assert sum(p.numel() for p in masked.parameters()) > sum(p.numel() for p in removed.parameters())
    with torch.no_grad():
        assert not torch.allclose(masked(images()), removed(images()), atol=1e-5)
    with capture_decoder_skips(masked) as got_masked, capture_decoder_skips(removed) as got_removed:
        with torch.no_grad():
            masked(images())
            removed(images())
    assert got_masked[2] is not None and got_removed[2] is None


def test_test_time_mask_on_a_removed_skip_and_bad_specs() -> None:
    model = tiny_model("cct", "1011").eval()
    model.set_test_time_mask("0111")  # L2 is already gone: stays None; L1 is zeroed
    with capture_decoder_skips(model) as received, torch.no_grad():
        model(images())
    assert received[2] is None and torch.count_nonzero(received[1]) == 0
    for bad in ("10", "L5", "some", "11111"):
        with pytest.raises(AblationError, match="accepted|expected"):
            model.set_test_time_mask(bad)


def test_build_errors_are_clear() -> None:
    with pytest.raises(AblationError, match="unknown connector 'transunet'.*unet, cct, cca, uctransnet"):
        ModelConfig(connector="transunet")
    with pytest.raises(AblationError, match="patch_sizes give different token grids"):
        build_model(dataclasses.replace(TINY, connector="cct", patch_sizes=(16, 8, 4, 4)))
    with pytest.raises(AblationError, match="does not tile level L1"):
        build_model(dataclasses.replace(TINY, connector="uctransnet", patch_sizes=(5, 8, 4, 2)))
    with pytest.raises(AblationError, match="num_heads"):
        build_model(dataclasses.replace(TINY, connector="uctransnet", num_heads=0))
    model = tiny_model("uctransnet").eval()
    with pytest.raises(AblationError, match="img_size"):
        model(torch.rand(1, 3, 64, 64))


def test_ctrans_other_image_size_and_patch_sizes() -> None:
    config = dataclasses.replace(TINY, connector="uctransnet", img_size=64, patch_sizes=(8, 4, 2, 1))
    model = build_model(config).eval()
    assert model.mtc.embeddings_1.position_embeddings.shape == (1, 64, 4)  # 8x8 tokens
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_all_skips_off_builds_no_transformer() -> None:
    for connector in ("cct", "uctransnet"):
        model = tiny_model(connector, "none")
        assert not any(name.startswith("mtc.") for name, _ in model.named_parameters())


@pytest.mark.parametrize("connector", ["unet", "uctransnet"])
def test_functional_call_and_vmap_over_stacked_variants(connector: str) -> None:
    """The models work under torch.func.functional_call and torch.vmap over stacked variants (docs/models.md)."""
    models = [tiny_model(connector, seed=seed).eval() for seed in range(2)]
    params, buffers = torch.func.stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")
    x = images()

    def run(p: dict, b: dict, batch: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(skeleton, (p, b), (batch,))

    with torch.no_grad():
        stacked = torch.vmap(run, in_dims=(0, 0, None))(params, buffers, x)
        for index, model in enumerate(models):
            torch.testing.assert_close(stacked[index], model(x), rtol=1e-5, atol=1e-5)
