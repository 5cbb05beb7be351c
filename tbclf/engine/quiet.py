"""Lightning's messages a tbclf user has no use for: product tips, accelerator inventory, and
warnings known to be harmless here. Everything else Lightning says still shows."""

from __future__ import annotations

import logging
import warnings

# Info lines dropped (their start): tips for Lightning's cloud products, which accelerators
# exist, and the KeyboardInterrupt notice that tbclf's own message (with the resume command)
# replaces.
_DROPPED_INFO = (
    "💡 Tip",
    "GPU available",
    "TPU available",
    "HPU available",
    "\nDetected KeyboardInterrupt",
)
# Warnings that say nothing actionable in tbclf runs (regexes on the message).
_HARMLESS = (
    # A torch deprecation inside Lightning's own pytree helper.
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    # A resumed run writes its checkpoints where they already are, by design.
    r"Checkpoint directory .* exists and is not empty",
    # test/predict log into a stage folder inside the run, not beside its checkpoints.
    r"The dirpath has changed from .* won't be reloaded",
)


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_DROPPED_INFO)


def quiet_lightning() -> None:
    """Install the filters (idempotent)."""
    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropInfo) for f in log.filters):
        log.addFilter(_DropInfo())
    for pattern in _HARMLESS:
        warnings.filterwarnings("ignore", message=pattern)
