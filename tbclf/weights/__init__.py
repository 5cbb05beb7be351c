"""Backbones that ship with tbclf (``model.weights: tbclf:NAME``); see MODEL_CARD.md here."""
