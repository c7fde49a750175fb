"""The usage guide stays complete: every usage, alias, hyper-parameter and run field is documented."""

from __future__ import annotations

import re
from pathlib import Path

from fairfm.spec import USAGE_ALIASES, RunSpec, hparams_model, list_usages

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "usages.md"


def _documented_names() -> set[str]:
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)", GUIDE.read_text(encoding="utf-8")))


def test_every_usage_alias_and_hyper_parameter_is_in_the_usage_guide():
    documented = _documented_names()
    missing = [u for u in list_usages() if u not in documented]
    missing += [a for a in USAGE_ALIASES if a not in documented]
    for usage in list_usages():
        missing += [f"{usage}.{field}" for field in hparams_model(usage).model_fields if field not in documented]
    assert not missing, f"docs/usages.md does not mention: {', '.join(missing)}"


def test_every_run_spec_field_is_in_the_usage_guide():
    documented = _documented_names()
    missing = [f for f in RunSpec.model_fields if f not in documented]
    assert not missing, f"docs/usages.md does not mention: {', '.join(missing)}"
