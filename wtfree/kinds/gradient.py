"""B gets W's gradient and W's optimizer (Kolen-Pollack), so with decay it converges to W."""

from wtfree.kinds import TRAIN, Feedback, Kind


class TrainedFeedback(Feedback):
    """B trained with W by W's optimizer (Kolen-Pollack: its gradient is W's)."""


KIND = Kind("gradient", stores_feedback=True, label=TRAIN, nnx_variable=TrainedFeedback)
