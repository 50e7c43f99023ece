"""K >= 1 variants trained together: their network, Adam, schedule, one training step and validation.

With K = 1 the network is the variant's own structural model (``build_model``), so a single run is the plain
training loop. With K >= 2 it is a :class:`ablation.models.fused.FusedUNet`: the variants side by side in the
channel axis, every parameter with the variants along dim 0. One Adam over the network's parameters is K
independent Adams (Adam is elementwise; the per-epoch cosine schedule is the same for all, same settings and
epoch), and the summed loss has the variants' losses as independent terms, so each variant's gradient is its
own. A variant's view of any packed tensor (parameter, buffer, Adam moment) is :meth:`Pack.restrict`; exporting
a variant, saving its Adam state and slicing out stopped variants all go through it.

The step never waits for the host: batches arrive on the device, losses stay there, and with
``TrainConfig.cuda_graphs`` on CUDA the whole step (forward, backward, Adam) is replayed from a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ablation.config import ModelConfig, TrainConfig
from ablation.models.fused import FusedUNet
from ablation.train.device import DeviceSetup, autocast, maybe_compile
from ablation.train.evaluate import logit_threshold
from ablation.train.losses import segmentation_loss
from ablation.train.metrics import EPSILON

GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture, as CUDA graph capture requires


def make_optimizer(params: Iterable[torch.Tensor], cfg: TrainConfig, setup: DeviceSetup) -> torch.optim.Adam:
    """The paper's Adam (``cfg.lr``, ``cfg.weight_decay``): fused on CUDA, capturable with CUDA graphs."""
    graphs = cfg.cuda_graphs and setup.is_cuda
    # A captured step reads the learning rate from device memory; Pack.step_schedule writes each epoch's into it.
    lr: float | torch.Tensor = torch.tensor(cfg.lr, device=setup.device) if graphs else cfg.lr
    return torch.optim.Adam(
        params, lr=lr, weight_decay=cfg.weight_decay, fused=setup.is_cuda, capturable=graphs
    )


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    """CosineAnnealingWarmRestarts with the ``cfg.scheduler_*`` settings, stepped once per epoch."""
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=cfg.scheduler_t0, T_mult=cfg.scheduler_t_mult, eta_min=cfg.scheduler_eta_min
    )


def pack_images(images: torch.Tensor, setup: DeviceSetup) -> torch.Tensor:
    """The variants' batches ``(K, B, C, H, W)`` as the network's input ``(B, K*C, H, W)`` (NHWC on CUDA)."""
    k, b, c, h, w = images.shape
    if setup.channels_last:
        packed = images.permute(1, 3, 4, 0, 2).reshape(b, h, w, k * c).permute(0, 3, 1, 2)
        return packed.contiguous(memory_format=torch.channels_last)  # a no-op unless K = 1
    return images.transpose(0, 1).reshape(b, k * c, h, w)


def variant_logits(logits: torch.Tensor) -> torch.Tensor:
    """The network's output ``(B, K, H, W)`` as per-variant logits ``(K, B, 1, H, W)`` (a view)."""
    return logits.transpose(0, 1).unsqueeze(2)


class Pack:
    """The network, optimiser and schedule of K variants that train in lockstep.

    Args:
        models: the variants' own networks from ``build_model`` on the device (their current weights start the
            pack). With one model the pack trains that model itself.
        configs: their model configs, in the same order.
        setup: device, autocast dtype and memory format.
        train: the shared training settings.

    Shapes: :meth:`step` takes images ``(K, B, 3, H, W)`` float and masks ``(K, B, 1, H, W)`` and returns the
    ``(K,)`` batch losses.
    """

    def __init__(
        self, models: Sequence[nn.Module], configs: Sequence[ModelConfig], *, setup: DeviceSetup,
        train: TrainConfig,
    ) -> None:  # fmt: skip
        self.setup, self.train_config = setup, train
        self.fused: FusedUNet | None = None
        if len(models) == 1:
            self.network: nn.Module = models[0]
        else:
            dtype = next(models[0].parameters()).dtype
            with torch.device(setup.device):
                self.fused = FusedUNet(configs, conv=train.pack_conv).to(dtype=dtype)
            for k, model in enumerate(models):
                self.fused.load_variant(k, model)
            if setup.channels_last:
                self.fused.to_channels_last()
            self.network = self.fused
        self.size = len(models)
        self.step_network = maybe_compile(self.network, setup, train.compile)
        self.param_names = [name for name, _ in self.network.named_parameters()]
        self.optimizer = make_optimizer(self.network.parameters(), train, setup)
        lr = self.optimizer.param_groups[0]["lr"]
        # With CUDA graphs: the device tensor the captured Adam step reads the learning rate from.
        self.lr_tensor: torch.Tensor | None = lr if isinstance(lr, torch.Tensor) else None
        self.scheduler = make_scheduler(self.optimizer, train)
        # The scheduler's constructor takes its first step, which before torch 2.10 put a new tensor where the
        # first captured graph would read the learning rate: put lr_tensor back (see step_schedule).
        self._set_lr(float(self.scheduler.get_last_lr()[0]))
        self._graphs: dict[tuple[int, ...], tuple[Any, ...]] = {}

    @property
    def lr(self) -> float:
        """The current learning rate (read once per epoch)."""
        return float(self.optimizer.param_groups[0]["lr"])

    # one view of every packed tensor per variant ----------------------------------------------------------

    def restrict(self, k: int, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Variant ``k``'s part of a tensor shaped like the network's ``name`` (parameter, buffer, moment)."""
        return tensor if self.fused is None else self.fused.restrict(k, name, tensor[k])

    def _embed(self, name: str, per_variant: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """The inverse of :meth:`restrict`: the variants' tensors in the network's layout (zeros elsewhere).

        Always a new tensor with its parameter's strides, also for a pack of one: CUDA's fused Adam refuses
        moments laid out otherwise, and a saved moment has the strides of the network it was saved from (a
        pack's transposed-convolution weights are NCHW, a single NHWC network's are not).
        """
        packed = torch.zeros_like(dict(self.network.named_parameters())[name])
        for k, tensor in enumerate(per_variant):
            if tensor is not None:
                self.restrict(k, name, packed).copy_(tensor)
        return packed

    def export(self, k: int, model: nn.Module) -> nn.Module:
        """Variant ``k``'s current weights and statistics in its own network ``model`` (returned)."""
        return model if self.fused is None else self.fused.export_variant(k, model)

    def optimizer_state(self, k: int, model: nn.Module) -> dict[str, Any]:
        """Variant ``k``'s Adam state as ``torch.optim.Adam(model.parameters()).state_dict()`` holds it (copies)."""
        packed = self.optimizer.state_dict()
        by_name = {self.param_names[index]: state for index, state in packed["state"].items()}
        names = [name for name, _ in model.named_parameters()]
        state = {}
        for index, name in enumerate(names):
            if name in by_name:
                state[index] = {
                    key: value.clone() if key == "step" else self.restrict(k, name, value).clone()
                    for key, value in by_name[name].items()
                }
        group = {key: value for key, value in packed["param_groups"][0].items() if key != "params"}
        group["lr"] = self.lr
        return {"state": state, "param_groups": [{**group, "params": list(range(len(names)))}]}

    def load_optimizer_states(
        self, states: Sequence[dict[str, Any]], models: Sequence[nn.Module], scheduler_state: dict[str, Any]
    ) -> None:
        """Restore the variants' Adam states (single-network form, as saved) and the shared schedule.

        All variants are at the same step (same epoch and train-set size). The optimiser keeps its own
        implementation settings (fused, capturable); the learning rate is the saved one.
        """
        by_name = []
        for state, model in zip(states, models):
            names = [name for name, _ in model.named_parameters()]
            by_name.append({names[index]: entry for index, entry in state["state"].items()})
        packed: dict[int, dict[str, torch.Tensor]] = {}
        for index, name in enumerate(self.param_names):
            entries = [variant.get(name) for variant in by_name]
            present = [entry for entry in entries if entry]
            if present:  # copies: the saved states stay as they were (a pack too large for memory is retried)
                packed[index] = {"step": present[0]["step"].clone()}
                for key in present[0].keys() - {"step"}:
                    packed[index][key] = self._embed(name, [e[key] if e else None for e in entries])
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": packed, "param_groups": groups})
        self._set_lr(float(states[0]["param_groups"][0]["lr"]))
        self.scheduler.load_state_dict(scheduler_state)

    def step_schedule(self) -> None:
        """Advance the per-epoch schedule and put its learning rate where the next steps read it.

        A captured CUDA graph reads :attr:`lr_tensor`, and whether ``scheduler.step()`` fills that tensor in place
        or replaces it with another object depends on the torch version, so the new value is written into it here.
        """
        self.scheduler.step()
        self._set_lr(float(self.scheduler.get_last_lr()[0]))

    def _set_lr(self, value: float) -> None:
        group = self.optimizer.param_groups[0]
        if self.lr_tensor is None:
            group["lr"] = value
            return
        self.lr_tensor.fill_(value)
        group["lr"] = self.lr_tensor  # load_state_dict and older schedulers put another object there

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the variants ``keep``: parameters, buffers and Adam moments are sliced along dim 0."""
        if self.fused is None:
            raise ValueError("a pack of one has no variants to slice out")
        index = torch.tensor(list(keep), device=self.setup.device)
        moments = {name: self.optimizer.state.get(p, {}) for name, p in self.network.named_parameters()}
        self.fused.select(keep)
        for name, parameter in self.network.named_parameters():
            for key, value in moments[name].items():
                if key != "step":  # the fused Adam kernel wants moments laid out like their parameter
                    moments[name][key] = torch.empty_like(parameter).copy_(value.index_select(0, index))
        self.size = len(keep)
        self._graphs.clear()

    # training and validation ------------------------------------------------------------------------------

    def losses(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The ``(K,)`` batch losses in training mode (differentiable)."""
        self.network.train()
        capturing = self.setup.is_cuda and torch.cuda.is_current_stream_capturing()
        with autocast(self.setup, cache=not capturing):
            logits = self.step_network(pack_images(images, self.setup))  # (B, K, H, W)
        return segmentation_loss(variant_logits(logits), masks, self.train_config.bce_weight)

    def step(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """One optimiser step of every variant; returns the ``(K,)`` detached losses (no host sync).

        With ``cuda_graphs`` on CUDA, full batches replay a captured graph; a shorter last batch runs eagerly.
        The graph's losses are its output buffer, valid until the next step: use them before stepping again.
        """
        cfg = self.train_config
        if cfg.cuda_graphs and self.setup.is_cuda and images.shape[1] == cfg.batch_size:
            return self._replay(images, masks)
        losses = self.losses(images, masks)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach()

    def _replay(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        key = tuple(images.shape)
        if key not in self._graphs:
            self._graphs[key] = self._capture(images, masks)
        graph, static_images, static_masks, static_losses = self._graphs[key]
        static_images.copy_(images)
        static_masks.copy_(masks)
        graph.replay()
        return static_losses

    def _capture(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[Any, ...]:
        """Capture one step for batches shaped like ``images``; the warm-up steps leave no trace."""
        static_images, static_masks = images.clone(), masks.clone()
        saved = self._snapshot()
        side = torch.cuda.Stream(self.setup.device)
        side.wait_stream(torch.cuda.current_stream(self.setup.device))
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self.losses(static_images, static_masks).sum().backward()
                self.optimizer.step()
        torch.cuda.current_stream(self.setup.device).wait_stream(side)
        self._restore(saved)
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the gradients
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            losses = self.losses(static_images, static_masks)
            losses.sum().backward()
            self.optimizer.step()
        return graph, static_images, static_masks, losses.detach()

    def _snapshot(self) -> dict[str, Any]:
        tensors = [*self.network.parameters(), *self.network.buffers()]
        tensors += [
            v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v)
        ]
        return {
            "tensors": [(tensor, tensor.detach().clone()) for tensor in tensors],
            "fresh": [p for p in self.network.parameters() if p not in self.optimizer.state],
            "cuda_rng": torch.cuda.get_rng_state(self.setup.device),
        }

    @torch.no_grad()
    def _restore(self, saved: dict[str, Any]) -> None:
        for tensor, value in saved["tensors"]:
            tensor.copy_(value)
        for parameter in saved["fresh"]:  # Adam state created by the warm-up: zeros = not yet stepped
            for value in self.optimizer.state[parameter].values():
                value.zero_()
        torch.cuda.set_rng_state(saved["cuda_rng"], self.setup.device)

    @torch.no_grad()
    def validate(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each variant's mean per-image loss and Dice (the paper's formula at the threshold), on the device.

        Args:
            images: ``uint8 (K, N, 3, H, W)``, variant k's validation images at ``[k]``.
            masks: ``uint8 (K, N, 1, H, W)``.

        Returns:
            ``(K,)`` mean losses and ``(K,)`` mean Dice (no host sync).
        """
        cfg = self.train_config
        self.network.eval()
        cut = logit_threshold(cfg.threshold)
        count = images.shape[1]
        loss_sum = torch.zeros(self.size, device=self.setup.device)
        dice_sum = torch.zeros(self.size, device=self.setup.device)
        for start in range(0, count, cfg.eval_batch_size):
            batch_masks = masks[:, start : start + cfg.eval_batch_size]
            logits = self._eval_logits(images[:, start : start + cfg.eval_batch_size])  # (K, b, 1, H, W)
            loss_sum += segmentation_loss(logits, batch_masks, cfg.bce_weight, per_image=True).sum(-1)
            pred = (logits.float() > cut).flatten(-3)  # (K, b, H*W)
            truth = batch_masks.flatten(-3).bool()
            intersection = (pred & truth).sum(-1)
            dice_sum += (2.0 * intersection / (pred.sum(-1) + truth.sum(-1) + EPSILON)).sum(-1)
        return loss_sum / count, dice_sum / count

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Each variant's foreground probabilities for a few images (the TensorBoard previews).

        Args:
            images: ``uint8 (K, n, 3, H, W)``, variant k's images at ``[k]``.

        Returns:
            ``float32 (K, n, 1, H, W)`` on the device.
        """
        self.network.eval()
        return torch.sigmoid(self._eval_logits(images).float())

    def _eval_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, b, 1, H, W)`` of ``uint8 (K, b, 3, H, W)`` images; the network must be in eval mode."""
        with autocast(self.setup):
            return variant_logits(self.step_network(pack_images(images.float().div_(255.0), self.setup)))
