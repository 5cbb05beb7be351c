"""Backbones tbclf pretrained itself and ships, named ``tbclf:<name>`` in ``model.weights``.

Their data, recipe, rebuild command, hashes and measured effect: ``MODEL_CARD.md`` here.
"""
