"""Classifier architectures and the UGE perturbation generator."""

from uge_hf.models.generator import PerturbationGenerator
from uge_hf.models.zoo import ARCHITECTURES

__all__ = ["ARCHITECTURES", "PerturbationGenerator"]
