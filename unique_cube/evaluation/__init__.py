"""Stage 4: the downscalers and the daily product measured as they are used
(``unique-cube evaluate``): every clear date against GPP_L, every day against the truth,
by stratum, with a spatial hold-out and fairly scored ensembles."""

from unique_cube.evaluation.evaluate import evaluate, evaluate_downscaler

__all__ = ["evaluate", "evaluate_downscaler"]
