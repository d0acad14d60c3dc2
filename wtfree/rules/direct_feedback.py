"""Direct feedback alignment: each hidden layer gets the output error through its own B."""

import jax
import jax.numpy as jnp

Array = jax.Array


def direct_feedback(h: Array, carrier: Array, b: Array) -> tuple[Array, Array]:
    r"""Marks a hidden activation h as receiving the output error e directly, through B.

    Forward: the identity on ``(h, carrier)``. Backward: whatever error arrives at h from above
    is dropped and replaced by

    .. math::
      \Delta h = e\,B \quad (\text{reshaped to } h\text{'s shape}),

    where e, the error at the network's output, arrives on the carrier (see
    :func:`direct_feedback_output`) and is passed on down unchanged to the layers below. The
    activation's derivative and the layer's local weight gradient then follow from ordinary
    autodiff, which gives Nokland's update :math:`\delta_l = (e B_l) \odot f'(a_l)`,
    :math:`\Delta W_l = h_{l-1}^\top \delta_l`. B is fixed: it gets no gradient.

    Args:
      h: a hidden activation, batch first.
      carrier: zeros shaped like the network's output; carries e down in the backward pass.
      b: the fixed feedback matrix, shape ``(outputs, prod(h.shape[1:]))``.

    Returns:
      ``(h, carrier)`` unchanged.

    References:
      Nokland, *Direct Feedback Alignment Provides Learning in Deep Neural Networks*,
      NeurIPS 2016.
    """
    return _direct_feedback(h, carrier, b)


@jax.custom_vjp
def _direct_feedback(h, carrier, b):
    del b
    return h, carrier


def _direct_feedback_fwd(h, carrier, b):
    return (h, carrier), (h.shape, b)


def _direct_feedback_bwd(res, g):
    shape, b = res
    dh_above, error = g
    # The error above is dropped, but dh keeps its dtype (bfloat16 activations, f32 B).
    dh = (error @ b).reshape(shape).astype(dh_above.dtype)
    return dh, error, jnp.zeros_like(b)


_direct_feedback.defvjp(_direct_feedback_fwd, _direct_feedback_bwd)


def direct_feedback_output(y: Array, carrier: Array) -> Array:
    r"""Puts the output error e on the carrier: forward the identity on y, backward
    :math:`\Delta y = \Delta\text{carrier} = e`.

    Args:
      y: the network's output (logits).
      carrier: zeros shaped like y, threaded through every :func:`direct_feedback`.

    Returns:
      y.
    """
    return _direct_feedback_output(y, carrier)


@jax.custom_vjp
def _direct_feedback_output(y, carrier):
    del carrier
    return y


def _direct_feedback_output_fwd(y, carrier):
    del carrier
    return y, None


def _direct_feedback_output_bwd(res, g):
    del res
    return g, g


_direct_feedback_output.defvjp(_direct_feedback_output_fwd, _direct_feedback_output_bwd)


def direct_feedback_input(x: Array, error: Array, b: Array) -> Array:
    r"""Marks a layer's input x as receiving the output error e directly, through B.

    Forward: the identity on x. Backward: whatever error arrives at x through the layer is
    dropped and replaced by

    .. math::
      \Delta x = e\,B \quad (\text{reshaped to } x\text{'s shape}),

    with e, the error at the network's output, computed beforehand (a first forward pass) and
    passed in as a value. Put on the input of every layer, this is Nokland's DFA for a model
    that threads no carrier: the layer below gets :math:`(e B_l) \odot f'(a)` through its
    activation, never an error through any :math:`W^\top`. B and e get no gradient.

    Args:
      x: a layer's input, batch first.
      error: the output error e, shape ``(batch, outputs)``.
      b: the fixed feedback matrix, shape ``(outputs, prod(x.shape[1:]))``.

    Returns:
      x unchanged.

    References:
      Nokland, *Direct Feedback Alignment Provides Learning in Deep Neural Networks*,
      NeurIPS 2016.
    """
    return _direct_feedback_input(x, error, b)


@jax.custom_vjp
def _direct_feedback_input(x, error, b):
    del error, b
    return x


def _direct_feedback_input_fwd(x, error, b):
    return x, (error, b)


def _direct_feedback_input_bwd(res, g):
    error, b = res
    dx = (error @ b).reshape(g.shape).astype(g.dtype)
    return dx, jnp.zeros_like(error), jnp.zeros_like(b)


_direct_feedback_input.defvjp(_direct_feedback_input_fwd, _direct_feedback_input_bwd)
