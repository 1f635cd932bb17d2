"""The reductions every loss of the plugin takes: "none" (elementwise), "sum", "mean"."""
REDUCTIONS = ("none", "sum", "mean")


def check_reduction(reduction: str) -> None:
    """Raises ValueError naming the choices for an unknown reduction."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
