"""Skip connectors: plain skips (U-Net) and CCT, the channel-wise cross-fusion transformer of UCTransNet.

UCTransNet (Wang, Cao, Wang, Zaiane; AAAI 2022, arXiv 2109.04335), Sec. 3.2: every skip level is cut into the
same number of patches (patch sizes 16/8/4/2 at 224 px give 14x14 tokens per level), each token carries the
level's channels. Queries come from each level, keys and values from the concatenation of all levels along the
channel axis, and attention runs along the *channel* axis: a level's ``C_i`` channels attend over the
``KV = sum C_i`` channels of all levels. Similarity maps are instance-normalised, then softmaxed; heads are
averaged. After ``num_layers`` pre-norm blocks (attention + MLP, residuals) and a final LayerNorm, tokens are
upsampled back, passed through 1x1 conv + BN + ReLU and added to the encoder feature.

A connector takes the list of the four encoder features in L1..L4 order (``None`` where a skip is switched
off) and returns the list the decoder consumes. Switched-off levels are left out of the queries and of the
key/value concatenation, so ``KV`` is the sum of the active levels' channels.

Attribute names that appear in the state dict (``embeddings_1``, ``encoder.layer``, ``attn_norm1``,
``channel_attn``, ``ffn1.fc1``, ``reconstruct_1``, ...) are the reference implementation's, so its checkpoints
load with ``strict=True``. Levels are numbered 1..4 as in the paper.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ablation.errors import AblationError

LAYER_NORM_EPS = 1e-6  # the reference's LayerNorm eps
INSTANCE_NORM_EPS = 1e-5  # nn.InstanceNorm2d's default, used by the reference on the similarity maps


class PlainSkips(nn.Module):
    """The U-Net connector: every active encoder feature goes to the decoder unchanged."""

    def forward(self, features: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        return list(features)


class PatchEmbedding(nn.Module):
    """Patch embedding of one level: ``(B, C, H, W) -> (B, N, C)`` with ``N = (H / patch) * (W / patch)``.

    A conv with kernel = stride = patch size keeps the width ``C``; learned position embeddings start at zero.
    """

    def __init__(self, *, channels: int, patch_size: int, num_tokens: int, dropout: float) -> None:
        super().__init__()
        self.patch_embeddings = nn.Conv2d(channels, channels, kernel_size=patch_size, stride=patch_size)
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_tokens, channels))
        self.dropout = nn.Dropout(dropout)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        tokens = rearrange(
            self.patch_embeddings(feature), "b c h w -> b (h w) c"
        )  # (B, C, h, w) -> (B, N, C)
        if tokens.shape[1] != self.position_embeddings.shape[1]:
            raise AblationError(
                f"input size gives {tokens.shape[1]} CCT tokens per level but the model was built for "
                f"{self.position_embeddings.shape[1]}: feed images of the img_size the model was built with"
            )
        return self.dropout(tokens + self.position_embeddings)


class Reconstruction(nn.Module):
    """Tokens to a feature map, ``(B, N, C) -> (B, C, H, W)``: nearest upsampling, 1x1 conv, BN, ReLU."""

    def __init__(self, *, channels: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.norm = nn.BatchNorm2d(channels)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = rearrange(
            tokens, "b (h w) c -> b c h w", h=height // self.patch_size
        )  # (B, N, C) -> (B, C, h, w)
        upsampled = F.interpolate(grid, scale_factor=self.patch_size, mode="nearest")  # (B, C, H, W)
        return self.activation(self.norm(self.conv(upsampled)))


class TokenMLP(nn.Module):
    """Per-token MLP ``C -> expand * C -> C`` with GELU; keys ``fc1``/``fc2`` as in the reference."""

    def __init__(self, channels: int, hidden_channels: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden_channels)
        self.fc2 = nn.Linear(hidden_channels, channels)
        self.dropout = nn.Dropout(dropout)
        # The reference's initialisation: Xavier-uniform weights, near-zero biases.
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.xavier_uniform_(self.fc2.weight)
        nn.init.normal_(self.fc1.bias, std=1e-6)
        nn.init.normal_(self.fc2.bias, std=1e-6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(tokens)))))


def _instance_norm(similarity: torch.Tensor) -> torch.Tensor:
    """Normalise each (sample, head) similarity map over its last two axes (``nn.InstanceNorm2d(heads)``)."""
    variance, mean = torch.var_mean(similarity, dim=(-2, -1), correction=0, keepdim=True)
    return (similarity - mean) * torch.rsqrt(variance + INSTANCE_NORM_EPS)


class ChannelCrossAttention(nn.Module):
    """Multi-head channel-wise cross attention of all active levels against the concatenation of all levels.

    Per-head projections are stored stacked, one ``(heads, out, in)`` parameter per projection, so all heads
    run in one matmul. The reference keeps one ``nn.Linear`` per head (keys ``query1.0.weight`` ..
    ``query1.3.weight``, ``key.h.weight``, ``value.h.weight``). Why stacked parameters rather than per-head
    modules stacked in ``forward``: no per-step copy of the (heads, KV, KV) key/value weights, and
    ``named_parameters`` holds exactly the tensors ``forward`` uses, which is what
    ``torch.func.functional_call`` and ``stack_module_state`` need. Two state-dict hooks translate: saving
    splits each stacked parameter into the reference's per-head keys (in the reference's key order), loading
    stacks them back; loading also accepts the stacked names.

    Args:
        channels: level number (1..4) -> channels of that level, active levels only.
        num_heads: attention heads.
        dropout: dropout on the attention probabilities and on the output projections (the reference uses its
            attention dropout rate for both).
    """

    def __init__(self, *, channels: dict[int, int], num_heads: int, dropout: float) -> None:
        super().__init__()
        self.levels = tuple(channels)
        self.num_heads = num_heads
        self.kv_channels = sum(channels.values())
        for level, width in channels.items():
            self.register_parameter(f"query{level}_heads", _stacked_linear_weight(num_heads, width, width))
        self.key_heads = _stacked_linear_weight(num_heads, self.kv_channels, self.kv_channels)
        self.value_heads = _stacked_linear_weight(num_heads, self.kv_channels, self.kv_channels)
        for level, width in channels.items():
            setattr(self, f"out{level}", nn.Linear(width, width, bias=False))
        self.attention_dropout = nn.Dropout(dropout)
        self.projection_dropout = nn.Dropout(dropout)
        self.register_state_dict_post_hook(_split_heads_for_saving)
        self.register_load_state_dict_pre_hook(_stack_heads_for_loading)

    def _stacked_names(self) -> list[tuple[str, str]]:
        """(stacked parameter name, reference per-head module name) in the reference's key order."""
        names = [(f"query{level}_heads", f"query{level}") for level in self.levels]
        return [*names, ("key_heads", "key"), ("value_heads", "value")]

    def forward(self, queries: list[torch.Tensor], keys_values: torch.Tensor) -> list[torch.Tensor]:
        """Args: normalised queries ``[(B, N, C_i)]`` per active level and keys_values ``(B, N, KV)``.

        Returns: ``[(B, N, C_i)]`` per active level.
        """
        # All heads in one GEMM: (heads, out, in) -> (heads * out, in); head-major output channels.
        keys = F.linear(keys_values, self.key_heads.flatten(0, 1))  # (B, N, H * KV)
        keys = rearrange(keys, "b n (h k) -> b h n k", h=self.num_heads)  # (B, H, N, KV)
        values = F.linear(keys_values, self.value_heads.flatten(0, 1))  # (B, N, H * KV)
        values = rearrange(values, "b n (h k) -> b h k n", h=self.num_heads)  # (B, H, KV, N)
        outputs = []
        for level, tokens in zip(self.levels, queries):
            query = F.linear(tokens, getattr(self, f"query{level}_heads").flatten(0, 1))  # (B, N, H * C)
            query = rearrange(query, "b n (h c) -> b h c n", h=self.num_heads)  # (B, H, C, N)
            similarity = torch.matmul(query, keys) / math.sqrt(self.kv_channels)  # (B, H, C, KV)
            # Statistics and softmax in float32: under bf16 autocast the matmul output is bf16.
            probabilities = _instance_norm(similarity.float()).softmax(dim=-1).to(values.dtype)
            probabilities = self.attention_dropout(probabilities)
            context = torch.matmul(probabilities, values)  # (B, H, C, N)
            context = context.mean(dim=1)  # heads averaged: (B, H, C, N) -> (B, C, N)
            context = rearrange(context, "b c n -> b n c")  # (B, C, N) -> (B, N, C)
            outputs.append(self.projection_dropout(getattr(self, f"out{level}")(context)))
        return outputs


def _stacked_linear_weight(num_heads: int, out_features: int, in_features: int) -> nn.Parameter:
    """``(heads, out, in)`` weights initialised per head like ``nn.Linear`` (uniform +-1/sqrt(in))."""
    weight = torch.empty(num_heads, out_features, in_features)
    bound = 1.0 / math.sqrt(in_features)
    nn.init.uniform_(weight, -bound, bound)
    return nn.Parameter(weight)


def _split_heads_for_saving(module: ChannelCrossAttention, state_dict: dict, prefix: str, _: Any) -> None:
    """State-dict post-hook: ``query1_heads (H, C, C)`` -> ``query1.0.weight`` .. ``query1.{H-1}.weight``."""
    own = {key: state_dict.pop(key) for key in [k for k in state_dict if k.startswith(prefix)]}
    for stacked, per_head in module._stacked_names():
        weights = own.pop(prefix + stacked)
        for head in range(module.num_heads):
            state_dict[f"{prefix}{per_head}.{head}.weight"] = weights[head]
    state_dict.update(own)  # the output projections out1..out4, after the heads as in the reference


def _stack_heads_for_loading(module: ChannelCrossAttention, state_dict: dict, prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook: stack the reference's per-head keys into the stacked parameters."""
    for stacked, per_head in module._stacked_names():
        head_keys = [f"{prefix}{per_head}.{head}.weight" for head in range(module.num_heads)]
        if all(key in state_dict for key in head_keys):
            state_dict[prefix + stacked] = torch.stack([state_dict.pop(key) for key in head_keys])


class ChannelTransformerLayer(nn.Module):
    """One CCT block: pre-LayerNorm channel cross attention and pre-LayerNorm MLP, each with a residual."""

    def __init__(
        self,
        *,
        channels: dict[int, int],
        num_heads: int,
        expand_ratio: int,
        attention_dropout: float,
        mlp_dropout: float,
    ) -> None:
        super().__init__()
        self.levels = tuple(channels)
        for level, width in channels.items():
            setattr(self, f"attn_norm{level}", nn.LayerNorm(width, eps=LAYER_NORM_EPS))
        self.attn_norm = nn.LayerNorm(sum(channels.values()), eps=LAYER_NORM_EPS)  # over the KV concatenation
        self.channel_attn = ChannelCrossAttention(
            channels=channels, num_heads=num_heads, dropout=attention_dropout
        )
        for level, width in channels.items():
            setattr(self, f"ffn_norm{level}", nn.LayerNorm(width, eps=LAYER_NORM_EPS))
        for level, width in channels.items():
            setattr(self, f"ffn{level}", TokenMLP(width, width * expand_ratio, mlp_dropout))

    def forward(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        """Args and returns: ``[(B, N, C_i)]`` per active level."""
        keys_values = self.attn_norm(torch.cat(tokens, dim=-1))  # [(B, N, C_i)] -> (B, N, KV)
        queries = [getattr(self, f"attn_norm{level}")(t) for level, t in zip(self.levels, tokens)]
        attended = self.channel_attn(queries, keys_values)
        tokens = [t + a for t, a in zip(tokens, attended)]
        return [
            t + getattr(self, f"ffn{level}")(getattr(self, f"ffn_norm{level}")(t))
            for level, t in zip(self.levels, tokens)
        ]


class ChannelTransformerEncoder(nn.Module):
    """``num_layers`` CCT blocks followed by one LayerNorm per level."""

    def __init__(self, *, channels: dict[int, int], num_layers: int, **layer_options: Any) -> None:
        super().__init__()
        self.levels = tuple(channels)
        self.layer = nn.ModuleList(
            ChannelTransformerLayer(channels=channels, **layer_options) for _ in range(num_layers)
        )
        for level, width in channels.items():
            setattr(self, f"encoder_norm{level}", nn.LayerNorm(width, eps=LAYER_NORM_EPS))

    def forward(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        for layer in self.layer:
            tokens = layer(tokens)
        return [getattr(self, f"encoder_norm{level}")(t) for level, t in zip(self.levels, tokens)]


class ChannelTransformer(nn.Module):
    """CCT connector: fuses the active skips with channel-wise cross attention and adds the result back.

    Args:
        channels: level number (1..4) -> encoder channels of that level, active levels only (at least one).
        img_size: input resolution; level ``l`` has size ``img_size / 2**(l-1)``.
        patch_sizes: level number -> patch size; every active level must give the same token count.
        num_heads, num_layers, expand_ratio: transformer shape (reference: 4, 4, 4).
        embedding_dropout, attention_dropout, mlp_dropout: dropout rates (reference: 0.1, 0.1, 0.0).
    """

    def __init__(
        self,
        *,
        channels: dict[int, int],
        img_size: int,
        patch_sizes: dict[int, int],
        num_heads: int,
        num_layers: int,
        expand_ratio: int,
        embedding_dropout: float,
        attention_dropout: float,
        mlp_dropout: float,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("a channel transformer needs at least one active skip level")
        self.levels = tuple(channels)
        num_tokens = _token_count(img_size, {level: patch_sizes[level] for level in self.levels})
        for level, width in channels.items():
            embedding = PatchEmbedding(
                channels=width,
                patch_size=patch_sizes[level],
                num_tokens=num_tokens,
                dropout=embedding_dropout,
            )
            setattr(self, f"embeddings_{level}", embedding)
        self.encoder = ChannelTransformerEncoder(
            channels=channels,
            num_layers=num_layers,
            num_heads=num_heads,
            expand_ratio=expand_ratio,
            attention_dropout=attention_dropout,
            mlp_dropout=mlp_dropout,
        )
        for level, width in channels.items():
            setattr(
                self, f"reconstruct_{level}", Reconstruction(channels=width, patch_size=patch_sizes[level])
            )

    def forward(self, features: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """Args: ``[(B, C_l, H_l, W_l) or None]`` for L1..L4. Returns the same layout, active levels fused."""
        active = [features[level - 1] for level in self.levels]
        tokens = [getattr(self, f"embeddings_{level}")(f) for level, f in zip(self.levels, active)]
        tokens = self.encoder(tokens)  # [(B, N, C_l)]
        fused = list(features)
        for level, feature, level_tokens in zip(self.levels, active, tokens):
            height, width = feature.shape[-2:]
            fused[level - 1] = feature + getattr(self, f"reconstruct_{level}")(level_tokens, height, width)
        return fused


def _token_count(img_size: int, patch_sizes: dict[int, int]) -> int:
    """Tokens per level; raises AblationError unless every level's patches tile it into the same grid."""
    grids = {}
    for level, patch in patch_sizes.items():
        side = img_size // 2 ** (level - 1)
        if patch < 1 or side % patch:
            raise AblationError(
                f"model.patch_sizes: patch size {patch} does not tile level L{level} ({side} px at img_size "
                f"{img_size}); choose sizes dividing "
                f"{img_size}, {img_size // 2}, {img_size // 4}, {img_size // 8}"
            )
        grids[level] = side // patch
    if len(set(grids.values())) > 1:
        sizes = ", ".join(f"L{level}: {grid}x{grid}" for level, grid in grids.items())
        raise AblationError(
            f"model.patch_sizes give different token grids per level ({sizes}); every level needs the same "
            "(the reference uses 16/8/4/2)"
        )
    return next(iter(grids.values())) ** 2
