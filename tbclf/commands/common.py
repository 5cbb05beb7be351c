"""What every extra command shares: its argument parser and the data options eda takes."""

from __future__ import annotations

from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from tbclf.data.imageio import DEFAULT_MAX_PIXELS
from tbclf.data.pixel_defaults import PIXEL_DEFAULTS

# The data options that shape what a model sees; eda takes them like training does.
DATA_OPTIONS: dict[str, tuple[type, Any, str]] = {
    "layout": (str, "auto", "auto, nlm, zindi or folders"),
    "preprocessing": (str, PIXEL_DEFAULTS.preprocessing, "clahe, equalize or none"),
    "clahe_clip_limit": (float, PIXEL_DEFAULTS.clahe_clip_limit, "CLAHE clip limit"),
    "clahe_tile_grid": (int, PIXEL_DEFAULTS.clahe_tile_grid, "CLAHE tiles per side"),
    "image_size": (int, 256, "side of the square image the statistics use"),
    "resize": (str, PIXEL_DEFAULTS.resize, "pad (keep aspect ratio) or squash"),
    "crop_border": (bool, PIXEL_DEFAULTS.crop_border, "crop uniform black bands first"),
    "num_workers": (int, 2, "decoding processes"),
    "max_pixels": (int, DEFAULT_MAX_PIXELS, "refuse bigger images"),
}


CHECKPOINT = "a tbclf checkpoint"
OUT = "output folder"


def command_parser(
    prog: str,
    description: str,
    required: dict[str, str] | None = None,
    overwrite: str | None = None,
) -> ArgumentParser:
    """A jsonargparse parser named `tbclf PROG` that also reads its options from --config.

    ``required`` maps each required path option to its help; ``overwrite`` (its help text)
    adds the ``--overwrite`` flag every command that writes outputs has.
    """
    parser = ArgumentParser(prog=f"tbclf {prog}", description=description, exit_on_error=True)
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="YAML with any of these options"
    )
    for name, text in (required or {}).items():
        parser.add_argument(f"--{name}", type=str, required=True, help=text)
    if overwrite is not None:
        parser.add_argument("--overwrite", type=bool, default=False, help=overwrite)
    return parser


REPLACE = "replace the outputs of an earlier run in --out"


def parsed_options(parser: ArgumentParser, argv: list[str]) -> dict[str, Any]:
    """The options as keyword arguments for the library call that does the work (--config
    only fed them, so it is not one)."""
    options = parser.parse_args(argv).as_dict()
    options.pop("config", None)
    return options


def add_tta(parser: ArgumentParser, note: str = "", optional: bool = False) -> None:
    """The ``--tta`` flag: P(TB) averaged over the test-time views (``optional``: None means
    "as the model file says", for exported models that carry the choice)."""
    parser.add_argument(
        "--tta",
        type=bool | None if optional else bool,
        default=None if optional else False,
        help=f"average P(TB) over the test-time views{note}",
    )
