"""Attacks on the disk shape network: IND PGD and APGD, the query-based Square attack, their ensemble
RegressionAutoAttack, and the OOD attack, torchattacks style.

Each attack is a small class: `attack(images, targets) -> AttackResult`. All of them run the network
in eval mode, take gradients only w.r.t. the input, and leave the network bit-identical.
"""

from ._base import Attack, AttackResult, BestIterate, attack_context, unwrap_model
from .apgd import APGD
from .layout import AttackLayout, layout_model, tune_attack_layout
from .autoattack import EnsembleResult, RegressionAutoAttack
from .objectives import build_objective, mean_point_distance, point_mse_per_sample
from .ood import OODAttack, targets_from_model
from .ood_sources import NATURAL_IMAGES, box_noise, natural_image, natural_images, uniform_noise
from .pgd import PGD
from .square import SquareAttack

__all__ = [
    "Attack", "AttackResult", "AttackLayout", "BestIterate", "APGD", "SquareAttack", "RegressionAutoAttack", "EnsembleResult",
    "attack_context", "unwrap_model", "build_objective", "mean_point_distance",
    "point_mse_per_sample", "PGD", "OODAttack", "targets_from_model", "NATURAL_IMAGES", "uniform_noise",
    "box_noise", "natural_image", "natural_images", "layout_model", "tune_attack_layout",
]
