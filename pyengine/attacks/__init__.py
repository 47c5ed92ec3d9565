"""Attacks on (defended) classifiers."""
from .pgd import PGD

__all__ = ["PGD"]
