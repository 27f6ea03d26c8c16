"""Attacks on the disk shape network: IND PGD and the OOD attack, torchattacks style.

Each attack is a small class: `attack(images, targets) -> AttackResult`. All of them run the network
in eval mode, take gradients only w.r.t. the input, and leave the network bit-identical.
"""

from ._base import Attack, AttackResult, attack_context, unwrap_model
from .objectives import build_objective, mean_point_distance, point_mse_per_sample
from .ood import OODAttack, targets_from_model
from .ood_sources import NATURAL_IMAGES, box_noise, natural_image, natural_images, uniform_noise
from .pgd import PGD

__all__ = [
    "Attack", "AttackResult", "attack_context", "unwrap_model", "build_objective", "mean_point_distance",
    "point_mse_per_sample", "PGD", "OODAttack", "targets_from_model", "NATURAL_IMAGES", "uniform_noise",
    "box_noise", "natural_image", "natural_images",
]
