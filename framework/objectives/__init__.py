"""Objective registry. Importing this package registers every objective module in it (torch only)."""

import importlib
import pkgutil

from framework.objectives.base import (
    FEEDBACK_KINDS,
    REQUIREMENTS,
    Objective,
    ObjectiveOutput,
    SequenceStats,
    build_objective,
    objective_class,
    register_objective,
    registered_objectives,
)

from framework.objectives._gradients import Combination, combine, gradient_coefficients

# Registration happens in each module's decorator; importing the modules is all that is needed here.
for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "Combination",
    "combine",
    "gradient_coefficients",
    "FEEDBACK_KINDS",
    "REQUIREMENTS",
    "Objective",
    "ObjectiveOutput",
    "SequenceStats",
    "build_objective",
    "objective_class",
    "register_objective",
    "registered_objectives",
]
