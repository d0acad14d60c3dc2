"""B drawn once and never trained (fa, frsf, dfa)."""

from wtfree.kinds import FROZEN, Feedback, Kind


class FixedFeedback(Feedback):
    """B drawn once and never trained (fa, frsf)."""


KIND = Kind("fixed", stores_feedback=True, label=FROZEN, nnx_variable=FixedFeedback)
