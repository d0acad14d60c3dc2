"""No stored B: backprop, and the sign rules, which derive B from W."""

from wtfree.kinds import FROZEN, Kind

KIND = Kind("none", stores_feedback=False, label=FROZEN)
