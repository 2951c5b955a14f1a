"""Vision towers of the Qwen-VL families: patch embedding, 2-D rotary, window attention, mergers.

`VisionTransformer` is Qwen2.5-VL's (RMSNorm, gated MLPs, windowed attention but in a few full-attention blocks);
`DeepStackVisionTransformer` is Qwen3-VL's (LayerNorm, plain MLPs, full attention per frame, learned position
embeddings resampled to each image's grid, and DeepStack: the outputs of a few intermediate blocks through mergers
of their own). Both share the blocks, attention, rotary embedding, merger and layout. `InternVisionTransformer` is
InternVL's InternViT: whole 448-px tiles, each attended on its own with a class token and learned positions, layer
scale, and a pixel-shuffle projector in place of the merger; it shares the row batching and the attention kernel.

The HF implementation builds its window permutation and attention segments with Python loops over
``grid_thw``. Here `vision_layout` computes the same permutation with array ops whose shapes depend only on the
number of patches, so the whole tower (layout included) runs under ``jax.jit`` and only recompiles when the
patch count changes, not when the image shapes inside it do.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from staged_vlm_jax.models.layers import (
    MLP,
    Embed,
    GatedMLP,
    LayerNorm,
    Linear,
    RMSNorm,
    apply_rotary,
    dot_product_attention,
    layer_range,
    param,
    rotary_inv_freq,
    scan_layers,
    stack_layers,
)
from staged_vlm_jax.models.sharding import active_batch_shards, constrain

# Patches the vision tower encodes at once when given rows of images (see `VisionTransformer.__call__`).
PATCHES_PER_STEP = 16384


@flax.struct.dataclass
class VisionLayout:
    """Where every patch goes, derived from ``grid_thw``.

    window_index [U]: merge unit at each position of the window-ordered sequence (HF's ``window_index``);
    window_segment / frame_segment [N]: attention segment of each window-ordered patch for the windowed and the
    full-attention blocks (full attention is per image frame, as HF's ``cu_seqlens``);
    rotary_hw [N, 2]: (row, column) of each window-ordered patch for the 2-D rotary embedding.
    """

    window_index: jax.Array
    window_segment: jax.Array
    frame_segment: jax.Array
    rotary_hw: jax.Array


def _segments(keys: list[jax.Array]) -> jax.Array:
    """Ids of runs of equal key tuples along a sorted sequence (0, 0, 1, 1, 1, 2, ...)."""
    changed = jnp.zeros(keys[0].shape, bool).at[1:].set(jnp.any(jnp.stack([k[1:] != k[:-1] for k in keys]), 0))
    return jnp.cumsum(changed)


def vision_layout(grid_thw: jax.Array, num_patches: int, merge_size: int, window_units: int | None) -> VisionLayout:
    """Window permutation, attention segments and rotary positions for packed images.

    ``grid_thw`` [I, 3] holds (t, h, w) in patches per image; patches arrive merge-block-major (each m×m block of
    neighbouring patches is contiguous), as the HF processor emits them. ``window_units`` is the window side in
    merge units (HF: window_size // merge_size // patch_size); None for a tower without windows, whose window order
    is then the patch order itself (``window_index`` the identity, windows the frames). Patches beyond the grids'
    total are padding (fixed shape buckets): they sort last and form their own segments, so they never mix with
    real patches.
    """
    unit = merge_size * merge_size
    num_units = num_patches // unit
    grid = grid_thw.astype(jnp.int32)
    hh, ww = grid[:, 1] // merge_size, grid[:, 2] // merge_size
    units_per_image = grid[:, 0] * hh * ww
    ends = jnp.cumsum(units_per_image)
    u = jnp.arange(num_units, dtype=jnp.int32)
    image = jnp.searchsorted(ends, u, side="right")  # == number of images for padding units
    real = image < grid.shape[0]
    image_or_last = jnp.minimum(image, grid.shape[0] - 1)
    offset = jnp.where(real, u - (ends - units_per_image)[image_or_last], 0)
    h_img, w_img = jnp.maximum(hh[image_or_last], 1), jnp.maximum(ww[image_or_last], 1)  # empty image slots
    frame = offset // (h_img * w_img)
    row, col = (offset // w_img) % h_img, offset % w_img
    if window_units is None:
        window_keys = [image, frame]
        window_index = u  # already in (image, frame) order
    else:
        window_keys = [
            image,
            frame,
            row // window_units,
            col // window_units,
            row % window_units,
            col % window_units,
        ]
        window_index = jnp.lexsort(window_keys[::-1])  # lexsort's primary key is the last one
    sorted_keys = [k[window_index] for k in window_keys]
    per_patch = lambda x: jnp.repeat(x, unit, total_repeat_length=num_patches)
    within = jnp.tile(jnp.arange(unit, dtype=jnp.int32), num_units)
    rotary_hw = jnp.stack(
        [
            per_patch(row[window_index]) * merge_size + within // merge_size,
            per_patch(col[window_index]) * merge_size + within % merge_size,
        ],
        axis=-1,
    )
    return VisionLayout(
        window_index=window_index,
        window_segment=per_patch(_segments(sorted_keys[:4])),
        frame_segment=per_patch(_segments(sorted_keys[:2])),
        rotary_hw=rotary_hw,
    )


def local_segment_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, segment: jax.Array, block: int, scale: float
) -> jax.Array:
    """Exact attention within contiguous segments of at most ``block`` tokens, in time and memory linear in N.

    q/k/v [N, H, D], segment [N]. The sequence is cut into blocks of ``block`` tokens; a segment that short can
    only span a block and its neighbours, so each query block attends its own and the two adjacent key blocks
    (3·block keys) under the segment-equality mask, instead of all N keys.
    """
    n, h, d = q.shape
    num_blocks = -(-n // block)
    pad = num_blocks * block - n
    blocks = lambda x, fill: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=fill).reshape(
        num_blocks, block, *x.shape[1:]
    )

    def with_neighbours(x, fill):
        edge = jnp.full_like(x[:1], fill)
        return jnp.concatenate(
            [jnp.concatenate([edge, x[:-1]]), x, jnp.concatenate([x[1:], edge])], axis=1
        )  # [blocks, 3·block, ...]

    seg_q = blocks(segment, -1)  # padding tokens form their own segment, so their rows stay finite
    seg_k = with_neighbours(seg_q, -2)  # keys beyond either end match nothing
    mask = seg_q[:, :, None] == seg_k[:, None, :]
    k_b, v_b = with_neighbours(blocks(k, 0), 0), with_neighbours(blocks(v, 0), 0)
    heads_major = lambda x: x.transpose(0, 2, 1, 3)  # [blocks, h, 3·block, d], the kernel's k/v layout
    out = dot_product_attention(blocks(q, 0), heads_major(k_b), heads_major(v_b), mask, scale)
    return out.reshape(num_blocks * block, h, d)[:n]


class VisionAttention(nnx.Module):
    """Bidirectional multi-head attention over packed patches, restricted to segments (windows or frames)."""

    def __init__(self, dim: int, num_heads: int, *, dtype, rngs):
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        # Fused [q | k | v] output, kept in HF's layout; "vision_qkv" is replicated by the default rules because a
        # shard boundary would cut through the q/k/v split.
        self.qkv = Linear(dim, 3 * dim, axes=("vision_embed", "vision_qkv"), use_bias=True, dtype=dtype, rngs=rngs)
        self.proj = Linear(dim, dim, axes=("vision_heads", "vision_embed"), use_bias=True, dtype=dtype, rngs=rngs)

    def __call__(
        self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment: jax.Array, window_block: int | None
    ) -> jax.Array:
        """``window_block``: the longest a segment can be when attention is windowed (None: full per frame)."""
        n = x.shape[0]
        qkv = self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        # HF rotates in float32 and casts back.
        q = apply_rotary(q.astype(jnp.float32), cos, sin).astype(x.dtype)
        k = apply_rotary(k.astype(jnp.float32), cos, sin).astype(x.dtype)
        scale = self.head_dim**-0.5
        if window_block is None:
            mask = lambda queries: (segment[queries][:, None] == segment[None, :])[None]  # same frame; [1, q, N]
            k, v = k.transpose(1, 0, 2)[None], v.transpose(1, 0, 2)[None]  # [1, H, N, D]
            out = dot_product_attention(q[None], k, v, mask, scale)[0]
        else:
            out = local_segment_attention(q, k, v, segment, window_block, scale)
        return self.proj(out.reshape(n, -1))


class VisionBlock(nnx.Module):
    """Pre-norm attention and MLP block: RMSNorm and a gated MLP (Qwen2.5-VL), or ``norm=LayerNorm`` and
    ``gated=False`` for a plain two-layer MLP (Qwen3-VL)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, act: str, dtype, rngs, norm=RMSNorm, gated=True):
        self.norm1 = norm(dim, eps=1e-6, dtype=dtype)
        self.norm2 = norm(dim, eps=1e-6, dtype=dtype)
        self.attn = VisionAttention(dim, num_heads, dtype=dtype, rngs=rngs)
        if gated:
            axes = ("vision_embed", "vision_mlp")
            self.mlp = GatedMLP(dim, mlp_dim, act=act, use_bias=True, axes=axes, dtype=dtype, rngs=rngs)
        else:
            axes = ("vision_embed", "vision_mlp", "vision_embed")
            self.mlp = MLP(dim, mlp_dim, dim, act=act, use_bias=True, axes=axes, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, segment, window_block):
        x = x + self.attn(self.norm1(x), cos, sin, segment, window_block)
        return x + self.mlp(self.norm2(x))


class PatchMerger(MLP):
    """Norm, then each m×m block of patch features concatenated and projected by a GELU MLP to the LLM width.

    ``norm``: RMSNorm (Qwen2.5-VL) or LayerNorm (Qwen3-VL); ``postshuffle`` normalises the concatenated block
    instead of each patch (Qwen3-VL's DeepStack mergers).
    """

    def __init__(self, dim: int, out_dim: int, merge_size: int, *, dtype, rngs, norm=RMSNorm, postshuffle=False):
        merged = dim * merge_size * merge_size
        self.ln_q = norm(merged if postshuffle else dim, eps=1e-6, dtype=dtype)
        axes = ("vision_merged", "vision_mlp", "embed")
        super().__init__(merged, merged, out_dim, act="gelu", use_bias=True, axes=axes, dtype=dtype, rngs=rngs)
        self.merged, self.postshuffle = merged, postshuffle

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(-1, self.merged) if self.postshuffle else x
        return super().__call__(self.ln_q(x).reshape(-1, self.merged))


def vision_rotary(rotary_hw: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin [N, head_dim] of the 2-D rotary embedding for patches at (row, column) ``rotary_hw`` [N, 2]: the
    first half of the head's angles are the row's, at head_dim/4 frequencies, then the column's; then duplicated."""
    inv_freq = rotary_inv_freq(head_dim // 2, theta)
    freqs = (rotary_hw.astype(jnp.float32)[..., None] * inv_freq).reshape(rotary_hw.shape[0], -1)  # [N, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def interpolated_position_embeddings(table: jax.Array, grid_thw: jax.Array, rotary_hw: jax.Array) -> jax.Array:
    """A square learned table [side², D] resampled to every patch's image grid: [N, D] in float32.

    HF's ``get_vision_interpolation_indices_and_weights`` (bilinear, align_corners; formerly
    ``fast_pos_embed_interpolate``) step for step: the patch at (row, col) of an h×w grid reads the table at
    (row·(side−1)/(h−1), col·(side−1)/(w−1)) from its four neighbours (clamped to the table) with hat-kernel weights,
    summed in float32. ``rotary_hw`` [N, 2] is each patch's (row, col) in patch order; padding patches beyond the
    grids read some image's grid (their features are never used).
    """
    side = int(table.shape[0] ** 0.5)  # as HF: int(num_position_embeddings ** 0.5)
    n = rotary_hw.shape[0]
    grid = grid_thw.astype(jnp.int32)
    ends = jnp.cumsum(grid[:, 0] * grid[:, 1] * grid[:, 2])
    image = jnp.minimum(jnp.searchsorted(ends, jnp.arange(n), side="right"), grid.shape[0] - 1)
    offsets = jnp.arange(2)

    def taps(index: jax.Array, size: jax.Array) -> tuple[jax.Array, jax.Array]:
        source = index.astype(jnp.float32) * (side - 1) / jnp.maximum(size - 1, 1).astype(jnp.float32)
        floor = jnp.floor(source)
        weights = jnp.maximum(1 - jnp.abs(source[:, None] - floor[:, None] - offsets), 0)
        return jnp.clip(floor.astype(jnp.int32)[:, None] + offsets, 0, side - 1), weights

    rows, row_weights = taps(rotary_hw[:, 0], grid[image, 1])
    cols, col_weights = taps(rotary_hw[:, 1], grid[image, 2])
    indices = (rows[:, :, None] * side + cols[:, None, :]).reshape(n, 4)
    weights = (row_weights[:, :, None] * col_weights[:, None, :]).reshape(n, 4)
    table = table.astype(jnp.float32)
    return sum(table[indices[:, k]] * weights[:, k, None] for k in range(4))


def map_rows(fn, rows, group: int) -> jax.Array:
    """``fn`` of each row of ``rows`` (arrays with a leading batch axis), ``group`` rows at a time on each device.

    The batch is sharded over the devices in contiguous blocks; a ``lax.map`` over the global row axis would step
    through rows that live on one device each, and the compiler gathers every row onto every device to do so (for
    a micro-batch of 16k-patch images, tens of GB, and the tower's work repeated on every device). So the rows are
    viewed as [shards, rows per shard], the map steps through the second axis and is vmapped over the first,
    which stays sharded: each device encodes its own rows, ``group`` of them per step."""
    shards, count = active_batch_shards(), rows[0].shape[0]
    if shards == 1 or count % shards:
        return jax.lax.map(lambda row: fn(*row), rows, batch_size=group)
    pin = lambda x, leading: constrain(x, (*leading, "batch", *(None,) * (x.ndim - len(leading) - 1)))
    blocks = [jnp.swapaxes(pin(x.reshape(shards, count // shards, *x.shape[1:]), ()), 0, 1) for x in rows]
    out = jax.lax.map(lambda row: jax.vmap(fn)(*row), tuple(pin(x, (None,)) for x in blocks), batch_size=group)
    return pin(jnp.swapaxes(out, 0, 1).reshape(count, *out.shape[2:]), ())


class VisionTransformer(nnx.Module):
    """Qwen2.5-VL vision tower: flattened patches [N, C·T·P·P] + grid_thw -> merged features [N / m², out_dim]."""

    def __init__(self, cfg, *, dtype, rngs):
        self.cfg = cfg
        patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2
        self.patch_embed = Linear(
            patch_dim,
            cfg.hidden_size,
            axes=("vision_patch", "vision_embed"),
            use_bias=False,
            dtype=dtype,
            rngs=rngs,
        )
        self.blocks = stack_layers(
            lambda: VisionBlock(
                cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, act=cfg.hidden_act, dtype=dtype, rngs=rngs
            ),
            cfg.depth,
        )
        self.merger = PatchMerger(cfg.hidden_size, cfg.out_hidden_size, cfg.spatial_merge_size, dtype=dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array, grid_thw: jax.Array) -> jax.Array:
        """Packed: pixel_values [N, C·T·P·P], grid_thw [I, 3] -> [N / m², out]. Per row: pixel_values [B, N, ·],
        grid_thw [B, I, 3] (unused image slots all-zero) -> [B, N / m², out], each row encoded on its own, so rows
        shard over the batch axes and micro-batches are plain row slices. Rows go through the tower
        `PATCHES_PER_STEP` patches' worth at a time per device (`map_rows`): small images all at once, a 16k-patch
        image alone, so its attention's memory does not multiply by the batch."""
        if pixel_values.ndim == 3:
            group = max(1, PATCHES_PER_STEP // pixel_values.shape[1])
            return map_rows(self._encode, (pixel_values, grid_thw), group)
        return self._encode(pixel_values, grid_thw)

    def _encode(self, pixel_values: jax.Array, grid_thw: jax.Array) -> jax.Array:
        cfg = self.cfg
        n = pixel_values.shape[0]
        unit = cfg.spatial_merge_size**2
        window_units = cfg.window_size // cfg.spatial_merge_size // cfg.patch_size
        layout = vision_layout(grid_thw, n, cfg.spatial_merge_size, window_units)
        dtype = self.patch_embed.kernel.dtype
        x = self.patch_embed(pixel_values.astype(dtype))
        x = x.reshape(n // unit, unit, -1)[layout.window_index].reshape(n, -1)
        cos, sin = vision_rotary(layout.rotary_hw, cfg.hidden_size // cfg.num_heads, cfg.rope_theta)
        window_block = (cfg.window_size // cfg.patch_size) ** 2  # patches in one full window

        def body(x, scanned):
            # Full-attention blocks (per frame) and windowed ones differ in their attention program: one scanned
            # body selects it per block (lax.cond on a scanned flag, so one trace of each whatever the depth).
            block, full = scanned
            frame = lambda x: block(x, cos, sin, layout.frame_segment, None)
            window = lambda x: block(x, cos, sin, layout.window_segment, window_block)
            return jax.lax.cond(full, frame, window, x), None

        full = jnp.asarray([i in cfg.fullatt_block_indexes for i in range(cfg.depth)])
        x, _ = scan_layers(self.blocks, body, x, full)
        merged = self.merger(x)
        return merged[jnp.argsort(layout.window_index)]


class DeepStackVisionTransformer(VisionTransformer):
    """Qwen3-VL vision tower: flattened patches [N, C·T·P·P] + grid_thw -> every merged token's features of each
    level side by side, [N / m², (1 + K) · out_dim]: the final merger's, then those of the K DeepStack levels (the
    outputs of blocks ``deepstack_visual_indexes`` through mergers of their own), which the decoder adds to its first
    K layers' outputs. Packed or per row as `VisionTransformer`."""

    def __init__(self, cfg, *, dtype, rngs):
        self.cfg = cfg
        patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2
        self.patch_embed = Linear(patch_dim, cfg.hidden_size, axes=("vision_patch", "vision_embed"), use_bias=True,
                                  dtype=dtype, rngs=rngs)  # fmt: skip
        self.pos_embed = Embed(cfg.num_position_embeddings, cfg.hidden_size, dtype=dtype, rngs=rngs,
                               axes=(None, "vision_embed"))  # fmt: skip
        self.blocks = stack_layers(
            lambda: VisionBlock(cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, act=cfg.hidden_act,
                                dtype=dtype, rngs=rngs, norm=LayerNorm, gated=False),
            cfg.depth,
        )  # fmt: skip

        def merger(postshuffle: bool) -> PatchMerger:
            return PatchMerger(cfg.hidden_size, cfg.out_hidden_size, cfg.spatial_merge_size, dtype=dtype, rngs=rngs,
                               norm=LayerNorm, postshuffle=postshuffle)  # fmt: skip

        self.merger = merger(False)
        self.deepstack_merger_list = nnx.List([merger(True) for _ in cfg.deepstack_visual_indexes])

    def _encode(self, pixel_values: jax.Array, grid_thw: jax.Array) -> jax.Array:
        cfg = self.cfg
        # No windows: patches stay in their order, every block attends its whole frame.
        layout = vision_layout(grid_thw, pixel_values.shape[0], cfg.spatial_merge_size, None)
        x = self.patch_embed(pixel_values.astype(self.patch_embed.kernel.dtype))
        x = x + interpolated_position_embeddings(self.pos_embed.weight[...], grid_thw, layout.rotary_hw).astype(x.dtype)
        cos, sin = vision_rotary(layout.rotary_hw, cfg.hidden_size // cfg.num_heads, cfg.rope_theta)
        body = lambda x, scanned: (scanned[0](x, cos, sin, layout.frame_segment, None), None)
        # The blocks run as scans up to each DeepStack block (its output also goes through its merger), then on.
        levels, start = [], 0
        for index, merger in zip(cfg.deepstack_visual_indexes, self.deepstack_merger_list, strict=True):
            x, _ = scan_layers(layer_range(self.blocks, start, index + 1), body, x, None)
            levels.append(merger(x))
            start = index + 1
        if start < cfg.depth:
            x, _ = scan_layers(layer_range(self.blocks, start, cfg.depth), body, x, None)
        return jnp.concatenate([self.merger(x), *levels], axis=-1)


# ----------------------------------------------------------------------------------------------------------------
# InternViT (InternVL): whole tiles of 448 px, a class token and learned positions per tile, layer scale, and a
# pixel-shuffle projector in place of the merger.


def merge_block_order(side: int, merge_size: int) -> np.ndarray:
    """The row-major index of each patch of a side x side grid, in the processor's merge-block-major order (each
    m x m block of neighbouring patches contiguous, blocks row-major): where each flattened patch row of a tile
    sits in the tower's row-major position table."""
    index = np.arange(side * side).reshape(side // merge_size, merge_size, side // merge_size, merge_size)
    return index.transpose(0, 2, 1, 3).reshape(-1)


class TileAttention(nnx.Module):
    """InternViT's bidirectional attention over each tile's tokens (class token and patches), tiles independent:
    separate q/k/v projections (HF's layout), optional RMSNorm over the whole q and k width (InternViT-6B's
    ``use_qk_norm``; the 300M tower of the 8B models has none), no rotary embedding."""

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool, qk_norm: bool, dtype, rngs):
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        linear = lambda bias: Linear(dim, dim, axes=("vision_embed", "vision_heads"), use_bias=bias, dtype=dtype,
                                     rngs=rngs)  # fmt: skip
        self.q_proj, self.k_proj, self.v_proj = linear(qkv_bias), linear(qkv_bias), linear(qkv_bias)
        self.projection_layer = Linear(dim, dim, axes=("vision_heads", "vision_embed"), use_bias=True, dtype=dtype,
                                       rngs=rngs)  # fmt: skip
        norm = lambda: RMSNorm(dim, eps=1e-6, dtype=dtype) if qk_norm else None
        self.q_norm, self.k_norm = norm(), norm()

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [tiles, S, D] -> [tiles, S, D]."""
        b, s, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        heads = lambda t: t.reshape(b, s, self.num_heads, self.head_dim)
        heads_major = lambda t: heads(t).transpose(0, 2, 1, 3)  # [tiles, H, S, hd], the kernel's k/v layout
        everything = lambda queries: jnp.ones((1, queries.shape[0], s), bool)  # a tile attends all of itself
        out = dot_product_attention(heads(q), heads_major(k), heads_major(v), everything, self.head_dim**-0.5)
        return self.projection_layer(out.reshape(b, s, -1))


class LayerScaleBlock(nnx.Module):
    """InternViT's pre-norm block: x + λ1 · attention(norm(x)), then x + λ2 · mlp(norm(x)); LayerNorm or RMSNorm
    per ``norm_type``. Parameter names are HF's, so the checkpoint needs no renames inside a block."""

    def __init__(self, cfg, *, dtype, rngs):
        dim = cfg.hidden_size
        norm = {"layer_norm": LayerNorm, "rms_norm": RMSNorm}[cfg.norm_type]
        self.layernorm_before = norm(dim, eps=cfg.layer_norm_eps, dtype=dtype)
        self.attention = TileAttention(dim, cfg.num_attention_heads, qkv_bias=cfg.attention_bias,
                                       qk_norm=cfg.use_qk_norm, dtype=dtype, rngs=rngs)  # fmt: skip
        self.layernorm_after = norm(dim, eps=cfg.layer_norm_eps, dtype=dtype)
        axes = ("vision_embed", "vision_mlp", "vision_embed")
        self.mlp = MLP(dim, cfg.intermediate_size, dim, act=cfg.hidden_act, use_bias=True, axes=axes, dtype=dtype,
                       rngs=rngs)  # fmt: skip
        scale = lambda: nnx.Param(jnp.full((dim,), cfg.layer_scale_init_value, dtype), logical_axes=("norm",))
        self.lambda_1, self.lambda_2 = scale(), scale()

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.lambda_1[...] * self.attention(self.layernorm_before(x))
        return x + self.lambda_2[...] * self.mlp(self.layernorm_after(x))


class PixelShuffleProjector(MLP):
    """InternVL's ``multi_modal_projector`` after its pixel shuffle (downsample ratio 1/m): each m x m block of patch
    features concatenated (row by row, as HF's shuffle orders them), LayerNorm (torch's default eps 1e-5), then
    Linear -> activation -> Linear to the LLM width. The blocks arrive contiguous (merge-block-major patches), so
    the shuffle is a reshape, as the Qwen mergers' is."""

    def __init__(self, dim: int, out_dim: int, merge_size: int, *, act: str, dtype, rngs):
        merged = dim * merge_size * merge_size
        self.layer_norm = LayerNorm(merged, eps=1e-5, dtype=dtype)
        axes = ("vision_merged", "vision_mlp", "embed")
        super().__init__(merged, out_dim, out_dim, act=act, use_bias=True, axes=axes, dtype=dtype, rngs=rngs)
        self.merged = merged

    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(self.layer_norm(x.reshape(-1, self.merged)))


class InternVisionTransformer(VisionTransformer):
    """InternViT and InternVL's projector: flattened patches [N, C·P·P] of whole tiles (N/T patches each, T =
    (image_size / patch_size)², merge-block-major as the processor emits them) + grid_thw (tiles, side, side) per
    image -> [N / m², out_dim]. Packed or per row as `VisionTransformer` (whose row batching this reuses).

    Every tile is an image of its own to the tower (HF runs the tiles as a batch): a class token and the learned
    position table (no interpolation: tiles always have the table's size) are added per tile, and attention never
    crosses tiles. So the grids only say how many tiles there are, which the patch count already does; padding
    patches form tiles of their own whose features are never read."""

    def __init__(self, cfg, *, dtype, rngs):
        self.cfg = cfg
        dim, side = cfg.hidden_size, cfg.image_size // cfg.patch_size
        patch_dim = cfg.in_channels * cfg.patch_size**2
        self.patch_embed = Linear(patch_dim, dim, axes=("vision_patch", "vision_embed"), use_bias=True, dtype=dtype,
                                  rngs=rngs)  # fmt: skip
        self.cls_token = param(rngs, (dim,), dtype, ("vision_embed",))
        self.position_embeddings = param(rngs, (side * side + 1, dim), dtype, (None, "vision_embed"))
        self.blocks = stack_layers(lambda: LayerScaleBlock(cfg, dtype=dtype, rngs=rngs), cfg.num_hidden_layers)
        self.merger = PixelShuffleProjector(dim, cfg.out_hidden_size, cfg.spatial_merge_size,
                                            act=cfg.projector_hidden_act, dtype=dtype, rngs=rngs)  # fmt: skip

    def _encode(self, pixel_values: jax.Array, grid_thw: jax.Array) -> jax.Array:
        cfg = self.cfg
        n, side, merge = pixel_values.shape[0], cfg.image_size // cfg.patch_size, cfg.spatial_merge_size
        tile = side * side
        tiles = -(-n // tile)
        pixels = jnp.pad(pixel_values, ((0, tiles * tile - n), (0, 0)))
        x = self.patch_embed(pixels.astype(self.patch_embed.kernel.dtype)).reshape(tiles, tile, -1)
        table = self.position_embeddings[...]
        x = x + table[1 + merge_block_order(side, merge)]
        cls = jnp.broadcast_to(self.cls_token[...] + table[0], (tiles, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
        x, _ = scan_layers(self.blocks, lambda x, scanned: (scanned[0](x), None), x, None)
        return self.merger(x[:, 1:])[: n // (merge * merge)]
