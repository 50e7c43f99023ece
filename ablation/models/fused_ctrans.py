"""CCT, the channel transformer of UCTransNet (Wang et al., AAAI 2022), for a fused pack of K variants.

The same computation as :class:`ablation.models.ctrans.ChannelTransformer` for K variants that share a skip
subset, with tokens laid out ``(B, N, K, C)``: concatenating levels along the last axis concatenates within each
variant, and every projection of all K variants and all heads is one batched matmul. Parameter names and the
per-variant shapes are those of the single model (``weight (K, *single shape)``), so a variant's weights are the
slice ``[k]``. The reconstruction's 1x1 convolution runs on the tokens before the nearest upsampling: a 1x1
convolution commutes with nearest upsampling, so the result is the same for ``patch**2`` times fewer FLOPs.

Dropout draws one mask for the whole pack from the global generator, so a packed variant sees other dropout
masks than it would alone: equal in distribution, not bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ablation.models.ctrans import INSTANCE_NORM_EPS, LAYER_NORM_EPS, _token_count
from ablation.models.fused_layers import PackedBatchNorm2d, PackedConv2d, PackedLayerNorm, PackedLinear


class FusedPatchEmbedding(nn.Module):
    """``(B, K*C, H, W) -> (B, N, K, C)``: one grouped patch convolution plus position embeddings."""

    def __init__(self, variants: int, *, channels: int, patch_size: int, num_tokens: int, dropout: float):
        super().__init__()
        self.patch_embeddings = PackedConv2d(variants, channels, channels, patch_size, stride=patch_size)
        self.position_embeddings = nn.Parameter(torch.zeros(variants, 1, num_tokens, channels))
        self.dropout = nn.Dropout(dropout)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        grid = self.patch_embeddings(feature)  # (B, K*C, h, w)
        b, _, h, w = grid.shape
        variants = self.position_embeddings.shape[0]
        tokens = grid.permute(0, 2, 3, 1).reshape(b, h * w, variants, -1)  # -> (B, N, K, C)
        return self.dropout(
            tokens + self.position_embeddings.permute(1, 2, 0, 3)
        )  # (K, 1, N, C) -> (1, N, K, C)


class FusedReconstruction(nn.Module):
    """``(B, N, K, C) -> (B, K*C, H, W)``: 1x1 conv on the tokens, nearest upsampling, BatchNorm, ReLU."""

    def __init__(self, variants: int, *, channels: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.conv = PackedConv2d(variants, channels, channels, 1)
        self.norm = PackedBatchNorm2d(variants, channels)

    def forward(self, tokens: torch.Tensor, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        b, n, variants, channels = tokens.shape
        rows = self.conv.matmul_rows(tokens.reshape(b * n, variants, channels).transpose(0, 1))  # (K, BN, C)
        side = height // self.patch_size
        grid = (
            rows.transpose(0, 1).reshape(b, side, -1, variants * channels).permute(0, 3, 1, 2)
        )  # (B,KC,h,w)
        if not like.is_contiguous(memory_format=torch.channels_last):
            grid = grid.contiguous()
        upsampled = F.interpolate(grid, scale_factor=self.patch_size, mode="nearest")  # (B, K*C, H, W)
        return torch.relu(self.norm(upsampled))


class FusedTokenMLP(nn.Module):
    """Per-token MLP ``C -> expand*C -> C`` with GELU for K variants (keys ``fc1``/``fc2``)."""

    def __init__(self, variants: int, channels: int, hidden_channels: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = PackedLinear(variants, channels, hidden_channels)
        self.fc2 = PackedLinear(variants, hidden_channels, channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(tokens)))))


class FusedChannelCrossAttention(nn.Module):
    """Channel-wise cross attention of K variants; every projection (all variants, all heads) one matmul."""

    def __init__(self, variants: int, *, channels: dict[int, int], num_heads: int, dropout: float) -> None:
        super().__init__()
        self.levels = tuple(channels)
        self.num_heads = num_heads
        self.kv_channels = sum(channels.values())
        kv = self.kv_channels
        for level, width in channels.items():
            self.register_parameter(
                f"query{level}_heads", nn.Parameter(torch.zeros(variants, num_heads, width, width))
            )
        self.key_heads = nn.Parameter(torch.zeros(variants, num_heads, kv, kv))
        self.value_heads = nn.Parameter(torch.zeros(variants, num_heads, kv, kv))
        for level, width in channels.items():
            setattr(self, f"out{level}", PackedLinear(variants, width, width, bias=False))
        self.attention_dropout = nn.Dropout(dropout)
        self.projection_dropout = nn.Dropout(dropout)

    def forward(self, queries: list[torch.Tensor], keys_values: torch.Tensor) -> list[torch.Tensor]:
        """Args: queries ``[(B, N, K, C_i)]``, keys_values ``(B, N, K, KV)``. Returns ``[(B, N, K, C_i)]``."""
        keys = torch.einsum("bnkc,khoc->bkhno", keys_values, self.key_heads)  # (B, K, H, N, KV)
        values = torch.einsum("bnkc,khoc->bkhon", keys_values, self.value_heads)  # (B, K, H, KV, N)
        outputs = []
        for level, tokens in zip(self.levels, queries):
            weight = getattr(self, f"query{level}_heads")
            query = torch.einsum("bnkc,khoc->bkhon", tokens, weight)  # (B, K, H, C, N)
            similarity = torch.matmul(query, keys) / math.sqrt(self.kv_channels)  # (B, K, H, C, KV)
            # Statistics and softmax in float32, as in the single model.
            similarity = similarity.float()
            variance, mean = torch.var_mean(similarity, dim=(-2, -1), correction=0, keepdim=True)
            normalised = (similarity - mean) * torch.rsqrt(variance + INSTANCE_NORM_EPS)
            probabilities = self.attention_dropout(normalised.softmax(dim=-1).to(values.dtype))
            context = torch.matmul(probabilities, values).mean(dim=2)  # heads averaged: (B, K, C, N)
            context = context.permute(0, 3, 1, 2)  # (B, K, C, N) -> (B, N, K, C)
            outputs.append(self.projection_dropout(getattr(self, f"out{level}")(context)))
        return outputs


class FusedChannelTransformerLayer(nn.Module):
    """One CCT block for K variants: pre-LayerNorm cross attention and MLP, each with a residual."""

    def __init__(self, variants: int, *, channels: dict[int, int], num_heads: int, expand_ratio: int,
                 attention_dropout: float, mlp_dropout: float) -> None:  # fmt: skip
        super().__init__()
        self.levels = tuple(channels)
        for level, width in channels.items():
            setattr(self, f"attn_norm{level}", PackedLayerNorm(variants, width, eps=LAYER_NORM_EPS))
        self.attn_norm = PackedLayerNorm(variants, sum(channels.values()), eps=LAYER_NORM_EPS)
        self.channel_attn = FusedChannelCrossAttention(
            variants, channels=channels, num_heads=num_heads, dropout=attention_dropout
        )
        for level, width in channels.items():
            setattr(self, f"ffn_norm{level}", PackedLayerNorm(variants, width, eps=LAYER_NORM_EPS))
            setattr(self, f"ffn{level}", FusedTokenMLP(variants, width, width * expand_ratio, mlp_dropout))

    def forward(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        keys_values = self.attn_norm(torch.cat(tokens, dim=-1))  # [(B, N, K, C_i)] -> (B, N, K, KV)
        queries = [getattr(self, f"attn_norm{level}")(t) for level, t in zip(self.levels, tokens)]
        tokens = [t + a for t, a in zip(tokens, self.channel_attn(queries, keys_values))]
        return [
            t + getattr(self, f"ffn{level}")(getattr(self, f"ffn_norm{level}")(t))
            for level, t in zip(self.levels, tokens)
        ]


class FusedChannelTransformerEncoder(nn.Module):
    """``num_layers`` fused CCT blocks and one LayerNorm per level."""

    def __init__(self, variants: int, *, channels: dict[int, int], num_layers: int, **options: Any) -> None:
        super().__init__()
        self.levels = tuple(channels)
        self.layer = nn.ModuleList(
            FusedChannelTransformerLayer(variants, channels=channels, **options) for _ in range(num_layers)
        )
        for level, width in channels.items():
            setattr(self, f"encoder_norm{level}", PackedLayerNorm(variants, width, eps=LAYER_NORM_EPS))

    def forward(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        for layer in self.layer:
            tokens = layer(tokens)
        return [getattr(self, f"encoder_norm{level}")(t) for level, t in zip(self.levels, tokens)]


class FusedChannelTransformer(nn.Module):
    """The CCT connector of K variants with the same active levels (arguments as ``ChannelTransformer``).

    ``forward([(B, K*C_l, H_l, W_l) or None] for L1..L4)`` returns the same layout, active levels fused.
    """

    def __init__(self, variants: int, *, channels: dict[int, int], img_size: int, patch_sizes: dict[int, int],
                 num_heads: int, num_layers: int, expand_ratio: int, embedding_dropout: float,
                 attention_dropout: float, mlp_dropout: float) -> None:  # fmt: skip
        super().__init__()
        self.levels = tuple(channels)
        num_tokens = _token_count(img_size, {level: patch_sizes[level] for level in self.levels})
        for level, width in channels.items():
            embedding = FusedPatchEmbedding(
                variants, channels=width, patch_size=patch_sizes[level], num_tokens=num_tokens,
                dropout=embedding_dropout,
            )  # fmt: skip
            setattr(self, f"embeddings_{level}", embedding)
        self.encoder = FusedChannelTransformerEncoder(
            variants, channels=channels, num_layers=num_layers, num_heads=num_heads, expand_ratio=expand_ratio,
            attention_dropout=attention_dropout, mlp_dropout=mlp_dropout,
        )  # fmt: skip
        for level, width in channels.items():
            reconstruction = FusedReconstruction(variants, channels=width, patch_size=patch_sizes[level])
            setattr(self, f"reconstruct_{level}", reconstruction)

    def forward(self, features: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        active = [features[level - 1] for level in self.levels]
        tokens = [getattr(self, f"embeddings_{level}")(f) for level, f in zip(self.levels, active)]
        tokens = self.encoder(tokens)  # [(B, N, K, C_l)]
        fused = list(features)
        for level, feature, level_tokens in zip(self.levels, active, tokens):
            height, width = feature.shape[-2:]
            reconstruct = getattr(self, f"reconstruct_{level}")
            fused[level - 1] = feature + reconstruct(level_tokens, height, width, feature)
        return fused
