"""wtfree.kinds: every rule's way of learning B is one registered object with its hooks."""

import pytest

from wtfree import kinds, optim, rules


def test_every_rule_names_a_registered_kind():
    for rule in rules.RULES.values():
        kind = kinds.get(rule.feedback)
        assert kind.stores_feedback == rule.stores_feedback


@pytest.mark.parametrize(
    "rule, label",
    [("bp", optim.FROZEN), ("fa", optim.FROZEN), ("kp", optim.TRAIN), ("wm", optim.FROZEN)]
    + [("sa", optim.ALIGN), ("aa", optim.ALIGN)],
)
def test_labels_are_the_optimizers(rule, label):
    assert kinds.get(rules.get(rule).feedback).label == label


def test_unknown_kind_is_refused_in_one_line():
    with pytest.raises(ValueError, match="unknown kind of feedback 'hebbian'; known: none"):
        kinds.get("hebbian")
