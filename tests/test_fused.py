"""A fused pack of K variants equals K separate runs; a pack of one is the plain training loop bit for bit.

The reference is a plain loop of K networks from ``build_model`` (their structural skips) with K Adams on the
same batches, independent of the engine. The pack-of-3 comparisons run in float64: Adam divides each gradient
coordinate by its own magnitude, so coordinates whose true gradient is zero (conv biases before BatchNorm) move
by up to lr on float32 rounding noise alone; in float64 that noise sits far below Adam's eps.
"""

from __future__ import annotations

import pytest
import torch

from ablation.config import ModelConfig, TrainConfig
from ablation.errors import AblationError
from ablation.models import build_model
from ablation.models.fused import MASKABLE, FusedUNet
from ablation.packing import MASKABLE_CONNECTORS
from ablation.train import pack as pack_module
from ablation.train.device import DeviceSetup, setup_device
from ablation.train.losses import segmentation_loss
from ablation.train.pack import Pack, make_scheduler

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CASES = {
    "unet": ["1111", "0101", "0000"],  # different skip subsets in one pack: masked = removed
    "cca": ["1111", "0101", "0110"],
    "uctransnet": ["1011", "1011", "1011"],  # CCT: one subset per pack, different seeds
}


def _model_config(connector: str, skips: str) -> ModelConfig:
    # No dropout, so the comparison is deterministic (a pack draws one CCT dropout mask for all variants).
    return ModelConfig(
        connector=connector, skips=skips, base_channels=4, img_size=32, embedding_dropout=0.0,
        attention_dropout=0.0,
    )  # fmt: skip


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _seeded_models(configs: list[ModelConfig], dtype: torch.dtype) -> list[torch.nn.Module]:
    models = []
    for seed, config in enumerate(configs):
        torch.manual_seed(seed)
        models.append(build_model(config).to(dtype))
    return models


def _batches(count: int, variants: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.rand(variants, 2, 3, 32, 32, generator=generator, dtype=dtype),
            (torch.rand(variants, 2, 1, 32, 32, generator=generator) > 0.7).to(dtype),
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize("connector", list(CASES))
def test_fused_pack_steps_equal_separate_runs(connector: str) -> None:
    configs = [_model_config(connector, skips) for skips in CASES[connector]]
    train = TrainConfig()
    pack = Pack(_seeded_models(configs, torch.float64), configs, setup=setup_device("cpu"), train=train)
    references = _seeded_models(configs, torch.float64)
    optimizers = [torch.optim.Adam(model.parameters(), lr=train.lr) for model in references]
    packed = dict(pack.network.named_parameters())
    for step, (images, masks) in enumerate(_batches(3, len(configs), torch.float64)):
        losses = pack.step(images, masks)
        for k, (model, optimizer) in enumerate(zip(references, optimizers)):
            model.train()
            loss = segmentation_loss(model(images[k]), masks[k])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            assert losses[k].item() == pytest.approx(loss.item(), abs=2e-5)
            for name, parameter in model.named_parameters():  # the pack's gradient restricted to variant k
                torch.testing.assert_close(
                    pack.restrict(k, name, packed[name].grad), parameter.grad, rtol=0, atol=2e-5,
                    msg=f"step {step}, variant {k}: {name}",
                )  # fmt: skip

    for k, (config, reference) in enumerate(zip(configs, references)):
        exported = _tensors(pack.export(k, build_model(config).double()))
        for name, tensor in _tensors(reference).items():  # parameters and BatchNorm statistics
            torch.testing.assert_close(exported[name], tensor, rtol=0, atol=2e-5, msg=f"variant {k}: {name}")

    # The weights that read a zeroed skip got exactly zero gradient and stayed exactly zero under Adam.
    masked_parts = 0
    for name, stacked in packed.items():
        for k in range(pack.size):
            if (
                name in dict(references[k].named_parameters())
                and pack.restrict(k, name, stacked).shape != stacked.shape[1:]
            ):
                unused_weights, unused_grads = stacked[k].detach().clone(), stacked.grad[k].clone()
                pack.fused.restrict(k, name, unused_weights).zero_()
                pack.fused.restrict(k, name, unused_grads).zero_()
                assert torch.count_nonzero(unused_weights) == 0 and torch.count_nonzero(unused_grads) == 0
                masked_parts += 1
    assert masked_parts == {"unet": 6, "cca": 4, "uctransnet": 0}[connector]


def test_fused_network_mirrors_the_single_models() -> None:
    """Same names as build_model, variants along dim 0; both 3x3 convolution modes compute the same."""
    configs = [_model_config("cca", skips) for skips in ("1111", "0110")]
    fused = FusedUNet(configs).double()
    models = _seeded_models(configs, torch.float64)
    for k, model in enumerate(models):
        fused.load_variant(k, model)
    single = _tensors(build_model(_model_config("cca", "1111")))
    packed = {name: tensor for name, tensor in _tensors(fused).items() if not name.startswith("skip_keep")}
    assert {name: (2, *tensor.shape) for name, tensor in single.items()} == {
        name: tuple(tensor.shape) for name, tensor in packed.items()
    }
    x = torch.rand(2, 2, 3, 32, 32, dtype=torch.float64)
    out = fused(x.flatten(1, 2))  # (B, K*3, H, W) -> (B, K, H, W)
    per_variant = FusedUNet(configs, conv="per_variant").double()
    per_variant.load_state_dict(fused.state_dict())
    channels_last = FusedUNet(configs).double()
    channels_last.load_state_dict(fused.state_dict())
    channels_last.to_channels_last()
    nhwc = x.flatten(1, 2).contiguous(memory_format=torch.channels_last)
    for k, model in enumerate(models):
        torch.testing.assert_close(out[:, k : k + 1], model(x[:, k]), rtol=0, atol=1e-12)
    torch.testing.assert_close(per_variant(x.flatten(1, 2)), out, rtol=0, atol=1e-12)
    torch.testing.assert_close(channels_last(nhwc), out, rtol=0, atol=1e-12)
    assert MASKABLE == MASKABLE_CONNECTORS  # the torch-free grouping rules agree with the network


def test_pack_of_one_is_the_plain_loop_bit_for_bit() -> None:
    config = _model_config("uctransnet", "1101")
    train = TrainConfig()
    (model,) = _seeded_models([config], torch.float32)
    pack = Pack([model], [config], setup=setup_device("cpu"), train=train)
    assert pack.network is model and pack.fused is None  # the structural network itself
    (reference,) = _seeded_models([config], torch.float32)
    optimizer = torch.optim.Adam(reference.parameters(), lr=train.lr)
    for images, masks in _batches(3, 1, torch.float32):
        losses = pack.step(images, masks)
        reference.train()
        loss = segmentation_loss(reference(images[0]), masks[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        assert torch.equal(losses[0], loss.detach())
    expected = _tensors(reference)
    assert all(torch.equal(tensor, expected[name]) for name, tensor in _tensors(model).items())
    assert pack.optimizer_state(0, model)["state"].keys() == optimizer.state_dict()["state"].keys()


def test_slicing_out_variants_keeps_the_others() -> None:
    configs = [_model_config("unet", skips) for skips in ("1111", "0011", "1100")]
    pack = Pack(
        _seeded_models(configs, torch.float32), configs, setup=setup_device("cpu"), train=TrainConfig()
    )
    (images, masks), again = _batches(2, 3, torch.float32)
    pack.step(images, masks)
    before = {k: pack.export(k, build_model(configs[k])).state_dict() for k in (0, 2)}
    adam = {k: pack.optimizer_state(k, build_model(configs[k])) for k in (0, 2)}
    pack.select([0, 2])
    assert pack.size == 2 and pack.fused.variant_skips == ["1111", "1100"]
    for new_k, old_k in enumerate((0, 2)):
        after = pack.export(new_k, build_model(configs[old_k])).state_dict()
        assert all(torch.equal(after[key], before[old_k][key]) for key in after)
        moments = pack.optimizer_state(new_k, build_model(configs[old_k]))["state"]
        for index, state in adam[old_k]["state"].items():
            assert all(torch.equal(moments[index][key], value) for key, value in state.items())
    assert torch.isfinite(pack.step(again[0][[0, 2]], again[1][[0, 2]])).all()
    with pytest.raises(ValueError, match="pack of one"):
        Pack([build_model(configs[0])], configs[:1], setup=setup_device("cpu"), train=TrainConfig()).select(
            [0]
        )


def test_resumed_adam_state_continues_exactly() -> None:
    """Saving each variant's Adam state and loading them into a new pack continues bit for bit."""
    configs = [_model_config("unet", skips) for skips in ("1111", "1010")]
    batches = _batches(3, 2, torch.float32)
    whole = Pack(
        _seeded_models(configs, torch.float32), configs, setup=setup_device("cpu"), train=TrainConfig()
    )
    for images, masks in batches:
        whole.step(images, masks)
    models = _seeded_models(configs, torch.float32)
    first = Pack(models, configs, setup=setup_device("cpu"), train=TrainConfig())
    first.step(*batches[0])
    first.scheduler.step()
    saved = [first.optimizer_state(k, first.export(k, model)) for k, model in enumerate(models)]
    for state in saved:  # as saved by a CUDA-graph run: a tensor learning rate, a capturable fused Adam
        state["param_groups"][0].update(
            lr=torch.tensor(first.lr, dtype=torch.float64), capturable=True, fused=True
        )
    resumed = Pack(models, configs, setup=setup_device("cpu"), train=TrainConfig())
    resumed.load_optimizer_states(saved, models, first.scheduler.state_dict())
    assert resumed.lr == first.lr < TrainConfig().lr
    assert not resumed.optimizer.param_groups[0]["capturable"]  # the optimiser keeps its own implementation
    resumed._set_lr(TrainConfig().lr)  # the reference pack never stepped its schedule
    for images, masks in batches[1:]:
        resumed.step(images, masks)
    expected = _tensors(whole.network)
    assert all(torch.equal(tensor, expected[name]) for name, tensor in _tensors(resumed.network).items())


def test_mixed_subsets_refused_for_cct() -> None:
    configs = [_model_config("uctransnet", skips) for skips in ("1111", "1011")]
    with pytest.raises(AblationError, match="same skip subset"):
        FusedUNet(configs)
    with pytest.raises(AblationError, match="differ only in the skip subset"):
        FusedUNet([_model_config("unet", "1111"), ModelConfig(base_channels=8, img_size=32)])


def test_channels_last_pack_keeps_its_layout_through_slicing() -> None:
    """The CUDA layout on CPU: NHWC activations and per-variant NHWC conv weights, moments laid out alike."""
    configs = [_model_config("unet", skips) for skips in ("1111", "0011", "1100")]
    nhwc = DeviceSetup(device=torch.device("cpu"), dtype=None, channels_last=True, name="cpu")
    batches = _batches(2, 3, torch.float64)
    packs = [
        Pack(_seeded_models(configs, torch.float64), configs, setup=setup, train=TrainConfig())
        for setup in (setup_device("cpu"), nhwc)
    ]
    for pack in packs:
        pack.step(*batches[0])
        pack.select([0, 2])
        pack.step(batches[1][0][[0, 2]], batches[1][1][[0, 2]])
    nchw, channels_last = (dict(pack.network.named_parameters()) for pack in packs)
    for name, parameter in channels_last.items():
        torch.testing.assert_close(parameter, nchw[name], rtol=0, atol=1e-10, msg=name)
        state = packs[1].optimizer.state[parameter]
        assert state["exp_avg"].stride() == parameter.stride() == state["exp_avg_sq"].stride(), name
    weight = channels_last["up2.nConvs.0.conv.weight"].flatten(0, 1)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def test_a_new_pack_steps_with_the_graphs_learning_rate_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first CUDA graph is captured with whatever the optimiser's ``lr`` is then, so it must be
    ``Pack.lr_tensor`` from the start. Before torch 2.10 (pytorch/pytorch PR 163098) the scheduler's constructor
    replaced a tensor learning rate by a new tensor (``CosineAnnealingWarmRestarts.step`` assigned ``get_lr()``),
    which the graph would then read, stale after the first epoch; emulated here on CPU."""
    config = _model_config("unet", "1111")

    def tensor_lr_adam(params, cfg, setup):  # as make_optimizer builds it for CUDA graphs
        return torch.optim.Adam(params, lr=torch.tensor(cfg.lr, dtype=torch.float64), foreach=False)

    def replacing_scheduler(optimizer, cfg):
        scheduler = make_scheduler(optimizer, cfg)
        optimizer.param_groups[0]["lr"] = optimizer.param_groups[0]["lr"].clone()  # what older torch did
        return scheduler

    monkeypatch.setattr(pack_module, "make_optimizer", tensor_lr_adam)
    monkeypatch.setattr(pack_module, "make_scheduler", replacing_scheduler)
    train = TrainConfig()
    pack = Pack(_seeded_models([config], torch.float64), [config], setup=setup_device("cpu"), train=train)
    assert pack.lr_tensor is not None and pack.optimizer.param_groups[0]["lr"] is pack.lr_tensor
    assert pack.lr_tensor.item() == train.lr


@pytest.mark.parametrize("connector", ["unet", "uctransnet"])
def test_resumed_adam_moments_are_laid_out_like_their_parameters(connector: str) -> None:
    """CUDA's fused Adam refuses moments whose strides differ from their parameter's. A run saved from a pack
    (the pack's transposed-convolution weights are NCHW) and resumed alone on its own NHWC network, or saved
    alone and resumed in a pack, gets moments laid out like the parameters it resumes into."""
    nhwc = DeviceSetup(device=torch.device("cpu"), dtype=None, channels_last=True, name="cpu")
    configs = [_model_config(connector, skips) for skips in CASES[connector][:2]]

    def nhwc_models(configs: list[ModelConfig]) -> list[torch.nn.Module]:
        return [
            model.to(memory_format=torch.channels_last) for model in _seeded_models(configs, torch.float64)
        ]

    pack = Pack(nhwc_models(configs), configs, setup=nhwc, train=TrainConfig())
    alone = [Pack(nhwc_models([c]), [c], setup=nhwc, train=TrainConfig()) for c in configs]
    for trained in (pack, *alone):
        trained.step(*_batches(1, trained.size, torch.float64)[0])
    saved = {
        "pack": [pack.optimizer_state(k, build_model(c)) for k, c in enumerate(configs)],
        "alone": [single.optimizer_state(0, single.network) for single in alone],
    }
    for source, states in saved.items():
        for size in (1, 2):
            resumed = Pack(nhwc_models(configs[:size]), configs[:size], setup=nhwc, train=TrainConfig())
            models = nhwc_models(configs[:size])
            resumed.load_optimizer_states(states[:size], models, pack.scheduler.state_dict())
            for name, parameter in resumed.network.named_parameters():
                state = resumed.optimizer.state[parameter]
                for key in ("exp_avg", "exp_avg_sq"):
                    assert state[key].stride() == parameter.stride(), (source, size, name, key)


def test_schedule_writes_its_learning_rate_into_the_graphs_tensor() -> None:
    """With CUDA graphs the Adam step reads the learning rate from one device tensor (``Pack.lr_tensor``): each
    epoch's schedule step must write its value there, the same object, also after a resume's state load."""
    config = _model_config("unet", "1111")
    train = TrainConfig(scheduler_t0=2)  # lr 1e-3, 5.5e-4, 1e-3, ...: a stale value would show
    packs = [Pack(_seeded_models([config], torch.float64), [config], setup=setup_device("cpu"), train=train)]
    packs.append(
        Pack(_seeded_models([config], torch.float64), [config], setup=setup_device("cpu"), train=train)
    )
    graphed = packs[1]  # as make_optimizer builds it for CUDA graphs, on CPU: a tensor learning rate
    graphed.lr_tensor = torch.tensor(train.lr, dtype=torch.float64)
    graphed.optimizer = torch.optim.Adam(graphed.network.parameters(), lr=graphed.lr_tensor, foreach=False)
    graphed.scheduler = make_scheduler(graphed.optimizer, train)
    lr_tensor = graphed.lr_tensor
    for epoch, (images, masks) in enumerate(_batches(4, 1, torch.float64)):
        for pack in packs:
            pack.step(images, masks)
            pack.step_schedule()
        assert graphed.optimizer.param_groups[0]["lr"] is lr_tensor and graphed.lr_tensor is lr_tensor
        expected = float(packs[0].scheduler.get_last_lr()[0])
        assert (
            lr_tensor.item()
            == pytest.approx(expected, rel=1e-12)
            == float(graphed.scheduler.get_last_lr()[0])
        )
        assert packs[0].lr == pytest.approx(expected, rel=1e-12)
        if epoch == 0:
            assert expected == pytest.approx((train.lr + train.scheduler_eta_min) / 2)
    for name, parameter in graphed.network.named_parameters():  # the steps used the schedule's values
        torch.testing.assert_close(parameter, dict(packs[0].network.named_parameters())[name], msg=name)

    # A resume loads the saved Adam state (its learning rate a float) and the schedule: the tensor stays.
    saved = graphed.optimizer_state(0, graphed.network)
    graphed.load_optimizer_states([saved], [graphed.network], graphed.scheduler.state_dict())
    assert (
        graphed.optimizer.param_groups[0]["lr"] is lr_tensor
        and lr_tensor.item() == saved["param_groups"][0]["lr"]
    )
    graphed.step_schedule()
    packs[0].step_schedule()
    assert lr_tensor.item() == pytest.approx(packs[0].lr, rel=1e-12)


def test_cca_gates_keep_the_skips_precision_under_autocast() -> None:
    """Under bf16 autocast a gated skip stays bf16 (its fp32 scale is cast), so the concatenation after it is too."""
    from ablation.models.blocks import ChannelCrossAttentionGate
    from ablation.models.fused import FusedChannelGate

    configs = [_model_config("cca", "1111"), _model_config("cca", "0110")]
    outputs: list[torch.dtype] = []
    for network, width in ((build_model(configs[0]), 3), (FusedUNet(configs), 6)):
        for module in network.modules():
            if isinstance(module, (ChannelCrossAttentionGate, FusedChannelGate)):
                module.register_forward_hook(lambda module, args, out: outputs.append(out.dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            network(torch.rand(2, width, 32, 32))
    assert outputs == [torch.bfloat16] * 8
