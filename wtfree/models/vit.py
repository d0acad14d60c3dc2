"""A small Vision Transformer written only with stock Flax linen modules (Dosovitskiy 2021).

Nothing here knows about learning rules: every weight that multiplies an activation lives in
a stock ``nn.Conv`` (the patch embedding), ``nn.DenseGeneral`` (the query, key, value and out
projections inside ``nn.MultiHeadDotProductAttention``) or ``nn.Dense`` (the MLP blocks and
the head), so ``wtfree.convert`` reaches all of them through ``flax.linen.intercept_methods``
as it would a user's own model. The two products of attention (q k^T and the weighted sum of
v) multiply activations by activations, hold no weight, and are differentiated by autodiff
under every rule, as are the layer norms, the class token and the position embeddings.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

POOLS = ("cls", "mean")


class MlpBlock(nn.Module):
    """Dense ``mlp_dim``, GELU, Dense back to the input's width."""

    mlp_dim: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="dense_0")(x)
        x = nn.gelu(x)
        return nn.Dense(width, dtype=self.dtype, name="dense_1")(x)


class EncoderBlock(nn.Module):
    """A pre-LN transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    num_heads: int
    mlp_dim: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(dtype=self.dtype, name="norm_0")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, name="attention"
        )(y, y)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype, name="norm_1")(x)
        return x + MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp")(y)


class Model(nn.Module):
    """A ViT: patches, a class token, learned positions, pre-LN blocks, a dense head.

    The image is cut into ``patch_size`` x ``patch_size`` patches, each embedded to ``width``
    by one conv of that kernel and stride (a dense layer on every flattened patch); a class
    token is prepended (``pool="cls"``) and learned position embeddings are added; ``depth``
    encoder blocks follow, then a final layer norm, the class token's output (or the mean over
    tokens, ``pool="mean"``) and a dense layer of logits named ``output``.

    The default is sized for 28x28 images (Fashion-MNIST): 7x7 patches of 4x4 pixels plus the
    class token make 50 tokens; 4 blocks of width 64, 4 heads of 16 and an MLP of 128
    (``configs/fashion_mnist_vit.py`` has its parameter count and speed).

    Attributes:
      num_classes: outputs.
      patch_size: the side of a square patch; it must divide the image's height and width.
      width: the token width (the attention's query, key and value width too).
      depth: encoder blocks.
      num_heads: attention heads; they must divide ``width``.
      mlp_dim: the hidden width of each MLP block.
      pool: ``cls`` (the class token's output) or ``mean`` (the mean over all tokens).
      dtype: the compute dtype; parameters stay float32.
    """

    num_classes: int
    patch_size: int = 4
    width: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_dim: int = 128
    pool: str = "cls"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or batch norm
        if self.pool not in POOLS:
            raise ValueError(f"pool={self.pool!r}; allowed: {', '.join(POOLS)}")
        height, width = x.shape[1:3]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"patch_size={self.patch_size} does not divide the image's {height}x{width}"
            )
        if self.width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} does not divide width={self.width}")
        p = self.patch_size
        x = nn.Conv(
            self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="embedding"
        )(x)
        x = x.reshape(x.shape[0], -1, self.width)
        if self.pool == "cls":
            cls = self.param("cls", nn.initializers.zeros_init(), (1, 1, self.width))
            cls = jnp.broadcast_to(cls, (x.shape[0], 1, self.width)).astype(x.dtype)
            x = jnp.concatenate([cls, x], axis=1)
        positions = self.param(
            "position_embedding", nn.initializers.normal(0.02), (1, x.shape[1], self.width)
        )
        x = x + positions.astype(x.dtype)
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, dtype=self.dtype, name=f"block_{i}")(x)
        x = nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)
        x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="output")(x)
