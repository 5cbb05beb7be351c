"""Classifiers: a timm transfer-learning model and the original project's small CNN."""

from tbclf.models.classifiers import SimpleCNNClassifier, TimmClassifier
from tbclf.models.module import TBClassifier

__all__ = ["SimpleCNNClassifier", "TBClassifier", "TimmClassifier"]
