"""Errors a user can act on: each message names the file or key and says what to do."""


class TbclfError(Exception):
    """Base class for errors caused by user input (data, config, checkpoints)."""


class DataError(TbclfError, ValueError):
    """A data file, folder or CSV that cannot be used as given."""


class ConfigError(TbclfError, ValueError):
    """A configuration value, weights file or checkpoint that does not fit."""


class TooManyPixels(DataError):
    """An image whose header declares more pixels than allowed (a decompression-bomb guard);
    raised before any pixel is decoded. The web service answers it with 413."""

    @classmethod
    def check(cls, path: object, height: int, width: int, max_pixels: int) -> None:
        if height * width > max_pixels:
            raise cls(
                f"Image {path} is {width}x{height} = {height * width} pixels, more than "
                f"data.max_pixels={max_pixels} (a guard against decompression bombs). Raise "
                "data.max_pixels if the image is genuine, or remove the file."
            )


def tbclf_cause(error: BaseException) -> TbclfError | None:
    """The TbclfError behind an exception that a library wrapped around it, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, TbclfError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
