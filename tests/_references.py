"""Float64 reference solutions shared by the solver tests."""

import itertools

import numpy as np


def above_by_active_sets(gramian, lower, weight_tolerance, gradient_tolerance):
    """argmin vᵀGv s.t. v ≥ lower, by enumerating the active sets (float64).

    The first set whose free part is non-negative and whose active part has
    a non-negative gradient, each within its tolerance, is the KKT point.
    """
    num = len(lower)
    offset = gramian @ lower
    for size in range(num + 1):
        for free in itertools.combinations(range(num), size):
            free = list(free)
            excess = np.zeros(num)
            if free:
                excess[free] = np.linalg.solve(
                    gramian[np.ix_(free, free)], -offset[free]
                )
            gradient = gramian @ excess + offset
            active = [i for i in range(num) if i not in free]
            if excess.min() >= -weight_tolerance and (
                gradient[active] >= -gradient_tolerance
            ).all():
                return lower + excess
    raise AssertionError("no KKT point found")
