"""The ablations of the paper's Table 1 (Lin et al., "Focal Loss for Dense Object Detection"): the
paper's numbers and the settings of the small-scale runs that answer the same questions."""

import dataclasses
from typing import Dict, Tuple

PAPER_PRIOR_PROB = 0.01  # the paper's pi for every experiment
# class bias -log((1 - 0.5) / 0.5) = 0: the "standard" init the paper compares against
NO_PRIOR_PROB = 0.5
RATIOS = {1: [1.0], 3: [0.5, 1.0, 2.0]}  # Table 1c: {1:1} or {1:2, 1:1, 2:1}

# Table 1 of the paper (ResNet-50-FPN, COCO minival, 600 px images): (AP, AP50, AP75) of the rows
# these settings reproduce. 1b: "varying gamma for FL (w. optimal alpha)"; 1c: "varying anchor
# scales and aspects" (with gamma 2, alpha .25). The prior pi = .01 is used in every row; without
# it, the paper (Sec. 5.1) says, training with CE fails quickly, the network diverging; it gives no
# number for FL without the prior.
PAPER_TABLE1 = {
    "1b gamma=0 alpha=.75": (31.1, 49.4, 33.0),
    "1b gamma=0.5 alpha=.50": (32.9, 51.7, 35.2),
    "1b gamma=1 alpha=.25": (33.7, 52.0, 36.2),
    "1b gamma=2 alpha=.25": (34.0, 52.5, 36.5),
    "1b gamma=5 alpha=.25": (32.2, 49.6, 34.8),
    "1c 1 scale x 1 ratio": (30.3, 49.0, 31.8),
    "1c 3 scales x 3 ratios": (34.0, 52.5, 36.5),
}


@dataclasses.dataclass(frozen=True)
class AblationSetting:
    """One training run of the ablation.

    ``prior_init`` False starts the class bias at 0 (every anchor at probability 0.5) instead of
    the paper's pi = 0.01. Anchors are ``num_scales`` octave scales 2^(k/num_scales) of each level's
    base size times ``num_ratios`` aspect ratios. ``paper_row`` names the matching row of
    :data:`PAPER_TABLE1` ("" if none).
    """

    name: str
    ablation: str  # "gamma", "prior", "anchors" or "seed": the question the setting answers
    gamma: float
    alpha: float
    prior_init: bool = True
    num_scales: int = 3
    num_ratios: int = 3
    seed: int = 1
    paper_row: str = ""
    paper_note: str = ""

    @property
    def prior_prob(self) -> float:
        return PAPER_PRIOR_PROB if self.prior_init else NO_PRIOR_PROB

    @property
    def anchors(self) -> str:
        return f"{self.num_scales}x{self.num_ratios}"


# The default ablation, in table order. gamma 2, alpha .25, pi .01, 3x3 anchors is the paper's final
# setting.
SETTINGS: Tuple[AblationSetting, ...] = (
    AblationSetting(
        "g0_a75", "gamma", 0.0, 0.75, paper_row="1b gamma=0 alpha=.75", paper_note="CE, best alpha"
    ),
    AblationSetting("g0.5_a50", "gamma", 0.5, 0.50, paper_row="1b gamma=0.5 alpha=.50"),
    AblationSetting("g1_a25", "gamma", 1.0, 0.25, paper_row="1b gamma=1 alpha=.25"),
    AblationSetting(
        "g2_a25", "gamma", 2.0, 0.25, paper_row="1b gamma=2 alpha=.25", paper_note="paper's best"
    ),
    AblationSetting("g5_a25", "gamma", 5.0, 0.25, paper_row="1b gamma=5 alpha=.25"),
    AblationSetting(
        "g2_a25_noprior", "prior", 2.0, 0.25, prior_init=False, paper_note="no number in the paper"
    ),
    AblationSetting(
        "g0_a75_noprior", "prior", 0.0, 0.75, prior_init=False, paper_note="paper: CE diverges"
    ),
    AblationSetting(
        "anchors_1x1",
        "anchors",
        2.0,
        0.25,
        num_scales=1,
        num_ratios=1,
        paper_row="1c 1 scale x 1 ratio",
    ),
    AblationSetting(
        "g2_a25_seed2",
        "seed",
        2.0,
        0.25,
        seed=2,
        paper_note="g2_a25 with another seed: run-to-run noise",
    ),
)
SETTINGS_BY_NAME: Dict[str, AblationSetting] = {s.name: s for s in SETTINGS}
BASELINE = "g2_a25"

# The panels of the plot: (title, settings) -- the baseline appears wherever it is the reference.
PLOT_PANELS = (
    ("gamma (alpha of Table 1b)", ("g0_a75", "g0.5_a50", "g1_a25", "g2_a25", "g5_a25")),
    ("prior init pi = .01 vs none", ("g2_a25", "g2_a25_noprior", "g0_a75", "g0_a75_noprior")),
    ("anchors (scales x ratios)", ("g2_a25", "anchors_1x1")),
    ("seed (noise)", ("g2_a25", "g2_a25_seed2")),
)
