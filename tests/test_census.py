"""The census: every keras-hub backbone class expands losslessly or is refused clearly.

See `census.py`. A class that neither `census_configs.CONFIGS` nor
`keras_lemon.support.CLASS_REFUSALS` knows fails `test_every_class_is_known`,
so that a keras-hub upgrade cannot add an unsupported family silently; the
README's table must agree with what each class measurably does.
"""

import pytest
from census import backbone_classes
from census import census_row
from census import readme_rows
from census_configs import CONFIGS

from keras_lemon.support import CLASS_REFUSALS


def test_every_class_is_known():
    unknown = [n for n in backbone_classes() if n not in CONFIGS and n not in CLASS_REFUSALS]
    assert not unknown, (
        f"keras-hub backbones the census does not know: {unknown}; add a tiny config "
        "to tests/census_configs.py or a refusal with its reason to keras_lemon/support.py")


def test_readme_lists_every_class():
    assert sorted(readme_rows()) == backbone_classes()


@pytest.mark.parametrize("name", [n for n in backbone_classes() if n in CONFIGS])
def test_census(name):
    _, width, depth, tasks, reason = census_row(name)
    assert readme_rows()[name] == (width, depth, tasks), (
        f"{name}: measured width {width}, depth {depth}, tasks [{tasks}] ({reason}); the "
        f"README says {readme_rows()[name]}: regenerate it with "
        "`python tests/census.py --write-readme`")
