"""Packed multi-variant training: K runs of one connector trained together in one model pass (issue 7).

A skip study of UCTransNet (Wang et al., AAAI 2022, Fig. 3) is dozens of small trainings: 16 skip subsets x
datasets x seeds x folds. One U-Net at 224 px with batch 4 leaves most of a GPU idle, so instead of running the
variants one after another we stack the parameters of K variants along a new leading axis and train them with one
``torch.func.vmap`` over ``torch.func.functional_call``: vmap turns every convolution into one grouped
convolution with K groups and every matmul into a batched one, so one forward/backward trains all K.

What each variant keeps to itself, exactly as if it ran alone (:func:`ablation.train.loop.train_run`):

- **parameters and BatchNorm statistics**: stacked ``(K, ...)`` tensors; the running-statistics buffers are
  vmapped too, so BatchNorm's in-place update writes each variant's own slice;
- **optimiser state**: Adam is elementwise, so one Adam over the stacked tensors is K independent Adams; the
  per-epoch CosineAnnealingWarmRestarts schedule is the same for all (same settings, same epoch);
- **initialisation**: each variant's network is built by ``build_model`` right after ``torch.manual_seed(seed)``,
  exactly as ``train_run`` does, and copied into the pack;
- **data stream**: its own ``torch.Generator`` (seeded as ``train_run`` seeds it) draws its batch order and its
  augmentation; the pack's input is ``(K, B, 3, H, W)``;
- **early stopping, failure and run folder**: validation, checkpoints, the test evaluation and ``metrics.json``
  use the single-run code on the variant's own network. A variant that stops (patience, non-finite loss) is
  written out and sliced out of the pack, so it costs nothing afterwards.

Skip subsets in one pack. All variants of a pack must share parameter shapes, so the pack is built with the
union of its variants' skips and each variant multiplies the skips it does not have by a fixed 0 before the
decoder. For ``unet`` and ``cca`` that is exactly the structurally removed model: the weights of the first decoder
convolution that read a zeroed skip receive exactly zero gradient, are set to zero, and Adam keeps them at zero
(zero gradient and zero moments give a zero update); the CCA gate of a zeroed skip outputs zeros and gets zero
gradient. The remaining weights are the structural model's own (built with the fan-in of the active channels), so
function, gradients and initialisation are those of ``build_model`` with the skip off; exporting a variant restricts
the packed tensors back to its structural layout (checkpoints load into ``build_model(config.model)``). For the
CCT connectors (``cct``, ``uctransnet``) zeroing is *not* removal: CCT's key/value LayerNorm and attention span all
active levels, so only variants with the same skip subset (different seeds or folds) are packed together.

Dropout (CCT only) draws from the global generator with ``randomness="different"`` under vmap, so a packed CCT
variant sees other dropout masks than it would alone: equal in distribution, not bit for bit.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from ablation.config import RunConfig, TrainConfig
from ablation.errors import AblationError
from ablation.io import read_json
from ablation.packing import MASKABLE_CONNECTORS, can_pack
from ablation.skips import NUM_SKIPS, skip_flags
from ablation.store import (
    CONFIG_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    run_id,
    run_name,
    write_status,
)
from ablation.train import loop
from ablation.train.device import DeviceSetup, autocast, determinism, setup_device, to_memory_format
from ablation.train.losses import segmentation_loss

# the pack of models --------------------------------------------------------------------------------------------


class MaskedSkips(nn.Module):
    """Plain skips multiplied by a per-variant 0/1 keep mask: the connector of a packed ``unet`` or ``cca``.

    The mask is a buffer so ``functional_call`` receives it with the parameters and vmap gives each variant its
    own ``(4,)`` slice; nothing in the module changes between calls (safe under ``torch.compile``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("keep", torch.ones(NUM_SKIPS))

    def forward(self, features: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """Args: ``[(B, C_l, H_l, W_l) or None]`` for L1..L4. Returns the same list, masked levels zeroed."""
        return [
            None if feature is None else feature * self.keep[level].to(feature.dtype)
            for level, feature in enumerate(features)
        ]


class ModelPack:
    """K variants of one network as stacked parameters, trained with one vmapped forward/backward.

    Args:
        models: the variants' structural networks from ``build_model`` (same connector and widths; skip subsets
            may differ for ``unet``/``cca``). Their current weights initialise the pack.
        configs: the variants' model configs, in the same order.
        setup: device, autocast dtype and memory format.
        train: optimiser and schedule settings (lr, weight decay, CosineAnnealingWarmRestarts).
        compile: ``torch.compile`` the vmapped loss (CUDA only).

    Shapes: :meth:`losses` takes images ``(K, B, 3, H, W)`` and masks ``(K, B, 1, H, W)`` and returns ``(K,)``.

    Memory format: the pack always computes in NCHW (contiguous), whatever ``setup.channels_last`` says. Under
    vmap, CUDA batch norm on a channels_last input asks ``is_contiguous(memory_format=channels_last)`` of a batched
    tensor, which functorch does not implement (torch 2.11: "NYI: querying is_contiguous inside of vmap for
    memory_format other than torch.contiguous_format"); ``torch.compile`` of the vmapped step fails the same way.
    The variants' own networks (validation, test) still use ``setup``'s format.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        configs: Sequence[Any],
        *,
        setup: DeviceSetup,
        train: TrainConfig,
        compile: bool = False,
    ) -> None:
        from ablation.models import build_model

        if len(models) != len(configs) or not models:
            raise ValueError("ModelPack needs one model config per model, and at least one model")
        self.setup = setup
        self.train_config = train
        self.variant_skips = [config.skips for config in configs]
        flags = np.array([skip_flags(skips) for skips in self.variant_skips])  # (K, 4)
        union = "".join("1" if on else "0" for on in flags.any(axis=0))
        self.masked = bool((flags.any(axis=0) & ~flags.all(axis=0)).any())  # a variant lacks a packed skip
        if self.masked and configs[0].connector not in MASKABLE_CONNECTORS:
            raise AblationError(
                f"connector {configs[0].connector!r} packs only variants with the same skip subset "
                f"(got {sorted(set(self.variant_skips))}); masking is exact for {', '.join(MASKABLE_CONNECTORS)}"
            )
        with torch.device(
            "meta"
        ):  # functional_call swaps in the stacked tensors; the template holds no memory
            self.template = build_model(dataclasses.replace(configs[0], skips=union))
            if self.masked:
                self.template.mtc = MaskedSkips()
        self._layouts = [self._layout(model) for model in models]
        self.params = self.stack([dict(model.named_parameters()) for model in models], leaf=True)
        buffers = [dict(model.named_buffers()) for model in models]
        if self.masked:
            for keep, named in zip(flags, buffers):
                named["mtc.keep"] = torch.tensor(keep, dtype=torch.float32, device=setup.device)
        self.buffers = self.stack(buffers)
        self.optimizer = loop.make_optimizer(self.params.values(), train, setup)
        self.scheduler = loop.make_scheduler(self.optimizer, train)
        self._compile = compile and setup.is_cuda
        self._loss_fn = self._build_loss_fn()

    @property
    def size(self) -> int:
        """K, the number of variants in the pack."""
        return len(self.variant_skips)

    # layout: structural <-> packed ---------------------------------------------------------------------------

    def _layout(self, model: nn.Module) -> dict[str, slice | str | None]:
        """For each packed tensor name: None (same shape), a slice of dim 1 (first decoder conv), or "absent".

        Only two differences between a structural network and the pack's are legal: the first convolution of a
        decoder block whose skip the variant lacks reads fewer input channels, and that block's CCA gate is
        missing. Anything else means the two do not correspond and raises.
        """
        own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        packed = {**dict(self.template.named_parameters()), **dict(self.template.named_buffers())}
        layout: dict[str, Any] = {}
        for name, tensor in packed.items():
            block_name = name.split(".")[0]
            if name not in own:
                if name != "mtc.keep" and ".coatt." not in name:
                    raise ValueError(f"packed tensor {name} has no counterpart in the variant's network")
                layout[name] = "absent"
            elif own[name].shape == tensor.shape:
                layout[name] = None
            elif name.endswith("nConvs.0.conv.weight") and block_name.startswith("up"):
                block = self.template.get_submodule(block_name)
                decoder_channels = own[name].shape[1]
                skip_channels = tensor.shape[1] - decoder_channels
                # The U-Net decoder concatenates [upsampled, skip], the UCTransNet-style one [skip, upsampled].
                layout[name] = slice(skip_channels, None) if block.skip_first else slice(0, decoder_channels)
            else:
                raise ValueError(
                    f"{name}: shape {tuple(own[name].shape)} cannot map to {tuple(tensor.shape)}"
                )
        extra = set(own) - set(packed)
        if extra:
            raise ValueError(f"the variant's network has tensors the pack lacks: {sorted(extra)[:5]}")
        return layout

    def _shapes(self) -> dict[str, torch.Size]:
        return {
            name: tensor.shape
            for name, tensor in [*self.template.named_parameters(), *self.template.named_buffers()]
        }

    def stack(
        self, per_variant: Sequence[dict[str, torch.Tensor]], *, leaf: bool = False
    ) -> dict[str, torch.Tensor]:
        """Embed each variant's tensors (structural names and shapes) into the packed layout and stack them.

        Missing channels and absent tensors are zeros. Names absent from every variant's dict (e.g. optimiser
        state for buffers) are left out.

        Args:
            per_variant: K dicts name -> structural tensor.
            leaf: return fresh leaf tensors that require grad (the trainable parameters).

        Returns:
            name -> ``(K, *packed_shape)`` tensor on the pack's device.
        """
        shapes = self._shapes()
        stacked = {}
        for name, shape in shapes.items():
            if not any(name in tensors for tensors in per_variant):
                continue
            reference = next(tensors[name] for tensors in per_variant if name in tensors)
            out = torch.zeros((len(per_variant), *shape), dtype=reference.dtype, device=self.setup.device)
            for k, tensors in enumerate(per_variant):
                if name in tensors:
                    where = self._layouts[k][name]
                    target = out[k][:, where] if isinstance(where, slice) else out[k]
                    target.copy_(tensors[name].detach())
            stacked[name] = out.requires_grad_() if leaf else out
        return stacked

    def restrict(self, k: int, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Variant ``k``'s slice of a packed tensor ``(*packed_shape)``, in its structural shape."""
        where = self._layouts[k][name]
        return tensor[:, where] if isinstance(where, slice) else tensor

    @torch.no_grad()
    def export(self, k: int, model: nn.Module) -> nn.Module:
        """Copy variant ``k``'s current weights and statistics into its structural network (returned)."""
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            source = self.params[name] if name in self.params else self.buffers[name]
            tensor.copy_(self.restrict(k, name, source[k]))
        return model

    # optimiser -----------------------------------------------------------------------------------------------

    def optimizer_state(self, k: int, model: nn.Module) -> dict[str, Any]:
        """Variant ``k``'s Adam state as ``torch.optim.Adam(model.parameters()).state_dict()`` would hold it."""
        names = [name for name, _ in model.named_parameters()]
        state = {}
        for index, name in enumerate(names):
            packed = self.optimizer.state.get(self.params[name])
            if not packed:
                continue
            state[index] = {
                key: value.clone() if key == "step" else self.restrict(k, name, value[k]).clone()
                for key, value in packed.items()
            }
        group = {key: value for key, value in self.optimizer.param_groups[0].items() if key != "params"}
        return {"state": state, "param_groups": [{**group, "params": list(range(len(names)))}]}

    def load_optimizer_states(
        self, states: Sequence[dict[str, Any]], models: Sequence[nn.Module], scheduler_state: dict[str, Any]
    ) -> None:
        """Restore every variant's Adam state (structural layout, as saved in checkpoint_last.pt) and the schedule.

        All variants must be at the same step (same epoch, same train-set size); the first one's step is used.
        """
        per_key: dict[str, list[dict[str, torch.Tensor]]] = {"exp_avg": [], "exp_avg_sq": []}
        step = None
        for state, model in zip(states, models):
            names = [name for name, _ in model.named_parameters()]
            for key in per_key:
                per_key[key].append({names[i]: s[key] for i, s in state["state"].items() if key in s})
            if state["state"]:
                step = next(iter(state["state"].values()))["step"]
        stacked = {key: self.stack(values) for key, values in per_key.items()}
        for name, param in self.params.items():
            if step is not None and name in stacked["exp_avg"]:
                self.optimizer.state[param] = {
                    "step": step.detach().clone().to(self._step_device()),
                    "exp_avg": stacked["exp_avg"][name],
                    "exp_avg_sq": stacked["exp_avg_sq"][name],
                }
        self.scheduler.load_state_dict(scheduler_state)
        self.optimizer.param_groups[0]["lr"] = states[0]["param_groups"][0]["lr"]

    def _step_device(self) -> torch.device:
        # Fused (CUDA) Adam keeps its step count on the device, the CPU implementation on the host.
        return self.setup.device if self.setup.is_cuda else torch.device("cpu")

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the variants at positions ``keep`` (parameters, buffers, optimiser state, schedule)."""
        index = torch.tensor(list(keep), device=self.setup.device)
        old_params, old_optimizer, old_scheduler = self.params, self.optimizer, self.scheduler
        self.params = {name: p.detach()[index].clone().requires_grad_() for name, p in old_params.items()}
        self.buffers = {name: b[index].clone() for name, b in self.buffers.items()}
        self.optimizer = loop.make_optimizer(self.params.values(), self.train_config, self.setup)
        for name, param in self.params.items():
            state = old_optimizer.state.get(old_params[name])
            if state:
                self.optimizer.state[param] = {
                    key: value.clone() if key == "step" else value[index].clone()
                    for key, value in state.items()
                }
        self.scheduler = loop.make_scheduler(self.optimizer, self.train_config)
        self.scheduler.load_state_dict(old_scheduler.state_dict())
        self.optimizer.param_groups[0]["lr"] = old_optimizer.param_groups[0]["lr"]
        self._layouts = [self._layouts[k] for k in keep]
        self.variant_skips = [self.variant_skips[k] for k in keep]
        self._loss_fn = self._build_loss_fn()

    # the step ------------------------------------------------------------------------------------------------

    def _build_loss_fn(self) -> Any:
        bce_weight = self.train_config.bce_weight
        template, setup = self.template, self.setup

        def variant_loss(params, buffers, images, masks):  # one variant: images (B, 3, H, W)
            with autocast(setup):
                logits = functional_call(template, (params, buffers), (images,))
            return segmentation_loss(logits, masks, bce_weight)

        # "different": dropout (CCT only) draws independent masks per variant.
        batched = vmap(variant_loss, randomness="different")
        return torch.compile(batched) if self._compile else batched

    def losses(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Training-mode losses of all variants; BatchNorm statistics are updated in place.

        Args:
            images: ``(K, B, 3, H, W)`` float in [0, 1], contiguous (see :class:`ModelPack` on memory format).
            masks: ``(K, B, 1, H, W)`` in {0, 1}.

        Returns:
            ``(K,)`` losses (0.5 BCE + 0.5 soft Dice of each variant's batch), differentiable.
        """
        self.template.train()
        return self._loss_fn(self.params, self.buffers, images, masks)

    def step(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """One optimiser step of every variant; returns the ``(K,)`` detached losses (no host sync).

        The summed loss has the per-variant losses as independent terms, so each variant's gradient is the
        gradient of its own loss, as in a separate run.
        """
        losses = self.losses(images, masks)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach()


def sample_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    index: torch.Tensor,
    generators: Sequence[torch.Generator] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather each variant's batch and augment it with its own generator, as ``train_run`` does for one run.

    Each variant's transforms are drawn by ``random_affine(B, generator)`` (the same draws ``augment_batch``
    makes), then all K * B samples are resampled by one ``apply_affine`` call.

    Args:
        images: ``uint8 (K, N, 3, H, W)`` train sets on the device.
        masks: ``uint8 (K, N, 1, H, W)``.
        index: ``(K, B)`` sample indices per variant.
        generators: the variants' data generators, or None for no augmentation.

    Returns:
        images ``(K, B, 3, H, W)`` float in [0, 1] and masks ``(K, B, 1, H, W)``, contiguous.
    """
    from ablation.data.augment import apply_affine, random_affine

    rows = torch.arange(index.shape[0], device=index.device)[:, None]
    batch_images, batch_masks = images[rows, index], masks[rows, index]  # (K, B, C, H, W)
    if generators is None:
        batch_images, batch_masks = batch_images.float().div_(255.0), batch_masks.float()
    else:
        theta = torch.cat([random_affine(index.shape[1], generator) for generator in generators])
        flat_images, flat_masks = apply_affine(batch_images.flatten(0, 1), batch_masks.flatten(0, 1), theta)
        batch_images = flat_images.unflatten(0, index.shape)  # (K * B, ...) -> (K, B, ...)
        batch_masks = flat_masks.unflatten(0, index.shape)
    return batch_images.contiguous(), batch_masks.contiguous()


# training ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Variant:
    """One run inside a pack: its config, folder, own network, data and early-stopping state."""

    position: int  # index in the caller's lists
    config: RunConfig
    out_dir: Path
    model: nn.Module  # structural network on the device; receives the packed weights for validation/saving
    generator: torch.Generator
    train: tuple[torch.Tensor, torch.Tensor]  # (N, 3, H, W), (N, 1, H, W) uint8 on the device
    val: tuple[torch.Tensor, torch.Tensor]
    test: Any  # PreparedSplit
    state: dict[str, Any]  # epoch, best_dice, best_epoch, best_model, history (train_run's checkpoint keys)
    setup_seconds: float = 0.0  # preparing this variant (splits, network, checkpoint), this session
    optimizer_state: dict[str, Any] | None = None  # from checkpoint_last.pt when resuming
    scheduler_state: dict[str, Any] | None = None


def train_packed(
    configs: Sequence[RunConfig],
    out_dirs: Sequence[str | Path],
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train K runs as one pack; each writes its own run folder exactly as ``train_run`` would.

    Runs already done are returned as they are. Interrupted runs resume from their own ``checkpoint_last.pt``
    (written by this function or by ``train_run``): variants at the same epoch resume as one pack, variants at
    different epochs (or with train sets of different size) train as separate sub-packs, one after another.

    Args:
        configs: the runs; :func:`can_pack` must accept them.
        out_dirs: one run folder per config (conventionally ``<results>/<ablation.store.run_name(config)>``).
        device: ``cpu``, ``cuda``, ``cuda:N`` or None (CUDA when available).
        progress: one tqdm bar per pack (epoch, variants still training, best validation Dice).

    Returns:
        Per run, in the given order: the content of its ``metrics.json``, or for a run whose loss became
        non-finite ``{"status": "failed: non-finite loss at epoch E", "run_id": ..., "run_name": ...}`` (that
        run's status.json says the same; the other runs of the pack carry on).

    Raises:
        AblationError: runs that cannot be packed, a folder that belongs to another run, bad input.
    """
    configs = list(configs)
    out_dirs = [Path(out_dir) for out_dir in out_dirs]
    if len(configs) != len(out_dirs):
        raise AblationError(f"train_packed: {len(configs)} configs but {len(out_dirs)} run folders")
    if len({path.resolve() for path in out_dirs}) != len(out_dirs):
        raise AblationError("train_packed: two runs of a pack share a run folder")
    if not can_pack(configs):
        raise AblationError(
            "train_packed: these runs cannot share a pack (they must differ only in seed, split and, for "
            f"{' and '.join(MASKABLE_CONNECTORS)}, skip subset): group them with group_for_packing"
        )
    for config in configs:
        loop.check_trainable(config)
    cfg = configs[0].train
    # The device is checked even when every run is done: a wrong device must not pass silently.
    setup = setup_device(device, precision=cfg.precision, channels_last=cfg.channels_last)
    results: list[dict[str, Any] | None] = [None] * len(configs)
    pending = []
    for position, out_dir in enumerate(out_dirs):
        if (out_dir / METRICS_FILE).exists():
            results[position] = read_json(out_dir / METRICS_FILE)
        else:
            pending.append(position)
    if pending:
        with determinism(cfg.deterministic):
            _train_pending([configs[p] for p in pending], [out_dirs[p] for p in pending], pending, setup,
                           progress, results)  # fmt: skip
    return results  # type: ignore[return-value]


def _train_pending(
    configs: list[RunConfig],
    out_dirs: list[Path],
    positions: list[int],
    setup: DeviceSetup,
    progress: bool,
    results: list[dict[str, Any] | None],
) -> None:
    """Prepare every pending variant (resuming from its checkpoint), then train them in compatible sub-packs."""
    from ablation.data import load_prepared

    first = configs[0]
    prepared = load_prepared(
        first.dataset,
        img_size=first.model.img_size,
        data_root=first.data_root,
        interpolation=first.interpolation,
    )
    variants: list[_Variant] = []
    try:
        for position, config, out_dir in zip(positions, configs, out_dirs):
            variants.append(_prepare_variant(position, config, out_dir, prepared, setup))
        subpacks: dict[tuple[int, int], list[_Variant]] = {}
        for variant in variants:
            done, variant.state["stopped_early"] = loop.has_stopped(variant.state, variant.config.train)
            if done:  # crashed after its last checkpoint but before metrics.json: nothing left to train
                results[variant.position] = _finish(variant, setup)
                continue
            key = (variant.train[0].shape[0], variant.state["epoch"])
            subpacks.setdefault(key, []).append(variant)
        for members in subpacks.values():
            _train_pack(members, setup, progress, results)
    except Exception as error:
        for variant in variants:  # record why they stopped; each stays resumable from its checkpoint
            if results[variant.position] is None and (variant.out_dir / CONFIG_FILE).exists():
                write_status(variant.out_dir, f"failed: {type(error).__name__}: {error}")
        raise


def _prepare_variant(
    position: int, config: RunConfig, out_dir: Path, prepared: Any, setup: DeviceSetup
) -> _Variant:
    """A variant's splits, config.json, network (seeded as train_run seeds it), generator and resumed state."""
    from ablation.data import run_splits
    from ablation.models import build_model

    started = time.perf_counter()
    train, val, test, record = run_splits(
        prepared, fold=config.fold, repeat=config.repeat, num_folds=config.num_folds
    )
    loop.write_run_config(out_dir, config, setup, prepared.fingerprint, record)
    torch.manual_seed(config.seed)  # weight init, as in train_run
    model = to_memory_format(build_model(config.model).to(setup.device), setup)
    generator = torch.Generator(device=setup.device).manual_seed(loop.derived_seed(config.seed, "data"))
    variant = _Variant(
        position=position,
        config=config,
        out_dir=out_dir,
        model=model,
        generator=generator,
        train=loop.split_to_device(train, setup),
        val=loop.split_to_device(val, setup),
        test=test,
        state=loop.new_run_state(),
    )
    if (out_dir / LAST_CHECKPOINT).exists():
        variant.state, variant.optimizer_state, variant.scheduler_state = loop.load_checkpoint(
            out_dir / LAST_CHECKPOINT, config, model, generator, setup
        )
        loop.write_history(out_dir, variant.state["history"])
    write_status(out_dir, "running", epoch=variant.state["epoch"])
    variant.setup_seconds = time.perf_counter() - started
    return variant


def _train_pack(
    variants: list[_Variant], setup: DeviceSetup, progress: bool, results: list[dict[str, Any] | None]
) -> None:
    """Train variants that share train-set size and epoch as one pack until each stops, then write it out."""
    cfg = variants[0].config.train
    pack = ModelPack(
        [v.model for v in variants],
        [v.config.model for v in variants],
        setup=setup,
        train=cfg,
        compile=cfg.compile,
    )
    if variants[0].optimizer_state is not None:
        pack.load_optimizer_states(
            [v.optimizer_state for v in variants], [v.model for v in variants], variants[0].scheduler_state
        )
    images = torch.stack([v.train[0] for v in variants])  # (K, N, 3, H, W) uint8
    masks = torch.stack([v.train[1] for v in variants])
    start_epoch = variants[0].state["epoch"]
    bar = tqdm(
        total=cfg.max_epochs, initial=start_epoch, desc=f"pack of {len(variants)}", disable=not progress
    )
    for epoch in range(start_epoch + 1, cfg.max_epochs + 1):
        epoch_start = time.perf_counter()
        lr = pack.optimizer.param_groups[0]["lr"]
        train_losses = _train_epoch(pack, images, masks, [v.generator for v in variants], setup, cfg)
        pack.scheduler.step()
        validation = [
            loop.validate(pack.export(k, v.model), *v.val, setup, cfg) for k, v in enumerate(variants)
        ]
        numbers = torch.stack(
            [
                train_losses,
                torch.stack([loss for loss, _ in validation]),
                torch.stack([dice for _, dice in validation]),
            ],
            dim=1,
        ).tolist()  # (K, 3): the one sync of the epoch
        seconds = (time.perf_counter() - epoch_start) / len(variants)  # the epoch's wall time, shared equally
        finished = []
        for k, (variant, (train_loss, val_loss, val_dice)) in enumerate(zip(variants, numbers)):
            reason = loop.record_non_finite(variant.out_dir, epoch, train_loss, val_loss)
            if reason is not None:
                results[variant.position] = {
                    "status": reason,
                    "run_id": run_id(variant.config),
                    "run_name": run_name(variant.config),
                }
                finished.append(k)
                continue
            if _end_epoch(variant, pack, k, epoch, (epoch, train_loss, val_loss, val_dice, lr, seconds)):
                results[variant.position] = _finish(variant, setup)
                finished.append(k)
        bar.set_postfix(
            variants=len(variants) - len(finished), best=max(v.state["best_dice"] for v in variants)
        )
        bar.update(1)
        if finished:
            keep = [k for k in range(len(variants)) if k not in finished]
            if not keep:
                break
            pack.select(keep)
            variants, images, masks = [variants[k] for k in keep], images[keep], masks[keep]
    bar.close()


def _train_epoch(
    pack: ModelPack,
    images: torch.Tensor,
    masks: torch.Tensor,
    generators: list[torch.Generator],
    setup: DeviceSetup,
    cfg: TrainConfig,
) -> torch.Tensor:
    """One pass over every variant's train set in its own random order; returns ``(K,)`` mean batch losses.

    Args:
        images: ``uint8 (K, N, 3, H, W)``; masks: ``uint8 (K, N, 1, H, W)``, on the device.
    """
    count = images.shape[1]
    # Each variant draws its order then its augmentations from its own generator, in train_run's order.
    order = torch.stack(
        [torch.randperm(count, generator=g, device=setup.device) for g in generators]
    )  # (K, N)
    loss_sum = torch.zeros(len(generators), device=setup.device)
    for start in range(0, count, cfg.batch_size):
        index = order[:, start : start + cfg.batch_size]  # (K, B)
        batch_images, batch_masks = sample_batch(images, masks, index, generators if cfg.augment else None)
        loss_sum += pack.step(batch_images, batch_masks) * index.shape[1]
    return loss_sum / count


def _end_epoch(variant: _Variant, pack: ModelPack, k: int, epoch: int, row: tuple) -> bool:
    """train_run's :func:`ablation.train.loop.end_epoch` for variant ``k`` of the pack; True when done.

    ``variant.model`` already holds the variant's weights after this epoch (exported for validation).
    """
    done, variant.state["stopped_early"] = loop.end_epoch(
        variant.state,
        row,
        config=variant.config,
        out_dir=variant.out_dir,
        model=variant.model,
        generator=variant.generator,
        optimizer_states=lambda: (pack.optimizer_state(k, variant.model), pack.scheduler.state_dict()),
    )
    return done


def _finish(variant: _Variant, setup: DeviceSetup) -> dict[str, Any]:
    """Best checkpoint, test evaluation and metrics.json, written by train_run's own :func:`finish_run`."""
    started = time.perf_counter()
    state = variant.state
    # Its share of the pack's epochs (each epoch's wall time / variants training, earlier sessions included)
    # plus its own set-up and evaluation.
    seconds_before = sum(row["seconds"] for row in state["history"]) + variant.setup_seconds
    return loop.finish_run(
        variant.config,
        variant.out_dir,
        variant.model,
        variant.test,
        setup,
        state,
        stopped_early=state.get("stopped_early", False),
        seconds_before=seconds_before,
        started=started,
    )
