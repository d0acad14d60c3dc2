"""wtfree.nnx.convert: an NNX model's Linear, LinearGeneral, Conv and Einsum layers computed by a
learning rule (not written yet)."""
