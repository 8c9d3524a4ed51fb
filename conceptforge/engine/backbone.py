"""Load a Stable-Diffusion-architecture model: the built-in model, a diffusers
folder, a single checkpoint file, or a hub id."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConceptforgeError, InputError

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = ("tiny-shapes",)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# model families: Stable Diffusion 1.x/2.x (one CLIP text encoder) and Stable Diffusion XL
# (two text encoders, pooled text and size/crop conditioning)
FAMILY_NAMES = {"sd": "Stable Diffusion 1.x/2.x", "sdxl": "Stable Diffusion XL"}


@dataclass
class ModelSource:
    """Where a model comes from, resolved."""

    spec: str
    kind: str  # builtin | folder | single_file | hub
    path: Path | None = None
    config: Path | None = None

    @property
    def is_builtin(self) -> bool:
        return self.kind == "builtin"

    @property
    def family(self) -> str:
        """"sd" (1.x/2.x) or "sdxl", read from the model's files without loading weights."""
        return model_family(self)


def model_family(source: ModelSource) -> str:
    """The model family: "sdxl" when the pipeline index names an XL pipeline or a
    second text encoder (a diffusers folder, a single file's config folder, a
    cached or reachable hub id) or a single .safetensors file holds SDXL's second
    text encoder (`conditioner.embedders.1`); "sd" otherwise."""
    import json

    if source.kind == "builtin":
        return "sd"
    index_file: Path | None = None
    if source.kind == "folder":
        index_file = source.path / "model_index.json"
    elif source.kind == "single_file" and source.config is not None:
        index_file = source.config / "model_index.json"
    elif source.kind == "single_file":
        return "sdxl" if _single_file_is_xl(source.path) else "sd"
    else:
        try:
            from huggingface_hub import hf_hub_download

            index_file = Path(hf_hub_download(source.spec, "model_index.json"))
        except Exception:  # noqa: BLE001 - unknown until the pipeline loads; loading names the failure
            return "sd"
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "sd"
    if not isinstance(index, dict):
        return "sd"
    xl = "XL" in str(index.get("_class_name", "")) or bool(index.get("text_encoder_2"))
    return "sdxl" if xl else "sd"


def unet_config(source: ModelSource) -> dict | None:
    """The UNet's config.json of a model, read without loading weights (None when
    the source has none at hand: a single file without a config folder, an
    unreachable hub id)."""
    import json

    if source.kind in ("builtin", "folder"):
        path = source.path / "unet" / "config.json"
    elif source.kind == "single_file" and source.config is not None:
        path = source.config / "unet" / "config.json"
    elif source.kind == "hub":
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source.spec, "unet/config.json"))
        except Exception:  # noqa: BLE001 - not at hand
            return None
    else:
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _single_file_is_xl(path: Path) -> bool:
    """Whether a single-file checkpoint holds SDXL's second text encoder: the
    safetensors header, or a .ckpt's keys (memory-mapped, tensors only, no code run)."""
    marker = "conditioner.embedders.1."
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                return any(k.startswith(marker) for k in fh.keys())
        data = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        state = data.get("state_dict", data) if isinstance(data, dict) else {}
        return isinstance(state, dict) and any(str(k).startswith(marker) for k in state)
    except Exception:  # noqa: BLE001 - a damaged or old-format file: loading names the fault
        return False


def resolve_source(spec: str, config: str | None = None, base: Path | None = None) -> ModelSource:
    """Interpret a --model value without loading anything."""
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_MODELS:
            raise InputError(f"Unknown built-in model {spec!r}; available: {', '.join(BUILTIN_PREFIX + m for m in BUILTIN_MODELS)}.")
        from ..shapes import model_path

        return ModelSource(spec, "builtin", model_path())
    path = Path(spec).expanduser()
    if not path.is_absolute() and base is not None and (base / path).exists():
        path = base / path
    cfg = Path(config).expanduser() if config else None
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise InputError(f"The model folder {path} has no model_index.json; it is not a diffusers pipeline folder.")
        return ModelSource(spec, "folder", path.resolve())
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise InputError(f"The model file {path} does not exist.")
        if cfg is not None and not (cfg / "model_index.json").is_file():
            raise InputError(f"The model config folder {cfg} has no model_index.json.")
        if cfg is None and _offline():
            raise InputError(
                f"Offline, the single-file model {path.name} needs --model-config DIR, a local diffusers folder of the same "
                "architecture (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."
            )
        return ModelSource(spec, "single_file", path.resolve(), cfg.resolve() if cfg else None)
    if path.exists() or spec.startswith((".", "/", "~")):
        raise InputError(f"The model {spec} is neither a diffusers folder nor a .safetensors/.ckpt file.")
    if spec.count("/") != 1:
        raise InputError(f"The model {spec!r} is not builtin:NAME, a local folder or file, or a hub id like owner/name.")
    return ModelSource(spec, "hub")


def check_hub_available(source: ModelSource) -> None:
    """Refuse a hub id at once when the hub is off (HF_HUB_OFFLINE) and the
    local hub cache has no copy of it, instead of letting the libraries retry."""
    if source.kind != "hub" or not _offline():
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source.spec, "model_index.json")
    except Exception:  # noqa: BLE001 - an id the cache cannot even look up is not cached
        cached = None
    if not isinstance(cached, str):
        raise InputError(
            f"The model {source.spec} is a hub id, and the hub is off (HF_HUB_OFFLINE=1) with no copy of it in the local cache; "
            "pass a local folder or file."
        )


def load_tokenizer(source: ModelSource):
    """The model's CLIPTokenizer, without loading weights."""
    from transformers import CLIPTokenizer

    check_hub_available(source)
    try:
        if source.kind in ("builtin", "folder"):
            return CLIPTokenizer.from_pretrained(str(source.path), subfolder="tokenizer")
        if source.kind == "single_file":
            if source.config is None:
                return None  # known only once the checkpoint is loaded
            return CLIPTokenizer.from_pretrained(str(source.config), subfolder="tokenizer")
        return CLIPTokenizer.from_pretrained(source.spec, subfolder="tokenizer")
    except OSError as exc:
        raise InputError(f"Could not load the tokenizer of model {source.spec}: {first_line(exc).rstrip('.')}.") from None


def quiet_libraries() -> None:
    """Silence the loading bars and notices of diffusers and transformers."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_pipeline(source: ModelSource, dtype: torch.dtype = torch.float32):
    """A StableDiffusionPipeline (no safety checker), or a StableDiffusionXLPipeline
    for the SDXL family, from any supported source."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    check_hub_available(source)
    quiet_libraries()
    if source.family == "sdxl":
        pipeline_class, common = StableDiffusionXLPipeline, dict(dtype=dtype)
    else:
        pipeline_class, common = StableDiffusionPipeline, dict(dtype=dtype, safety_checker=None, requires_safety_checker=False)
    label, hint = source.spec, ""
    try:
        if source.kind in ("builtin", "folder"):
            pipe = pipeline_class.from_pretrained(str(source.path), **common)
        elif source.kind == "single_file" and source.config is not None:
            # every config (and the tokenizer) from the local folder, every weight from the file; never the hub
            label = f"{source.spec} with the configs of {source.config}"
            pipe = pipeline_class.from_single_file(str(source.path), config=str(source.config), local_files_only=True, **common)
        elif source.kind == "single_file":
            hint = " (--model-config DIR, a local diffusers folder of the same architecture, avoids the hub)"
            pipe = pipeline_class.from_single_file(str(source.path), **common)
        else:
            pipe = pipeline_class.from_pretrained(source.spec, **common)
    except (ConnectionError, TimeoutError) as exc:
        raise ConceptforgeError(
            f"Could not load model {label}: the hub could not be reached ({first_line(exc)}); pass a local folder or file, "
            "or set HF_HUB_OFFLINE=1 to use the local cache."
        ) from exc
    except (OSError, ValueError, SingleFileComponentError) as exc:
        raise InputError(f"Could not load model {label}: {first_line(exc).rstrip('.')}{hint}.") from None
    except (KeyError, TypeError, AttributeError, RuntimeError) as exc:  # a damaged or foreign checkpoint
        raise InputError(f"Could not load model {label}: it is damaged or not a Stable-Diffusion-architecture model ({first_line(exc)}).") from exc
    except Exception as exc:  # noqa: BLE001 - e.g. a network failure while fetching a hub id
        raise ConceptforgeError(f"Could not load model {label}: {first_line(exc).rstrip('.')}.") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def pick_device(requested: str) -> torch.device:
    """The torch device for --device auto | cpu | cuda | cuda:N | mps; a device
    this machine lacks is an input error, named in one sentence."""
    value = str(requested).strip().lower()
    if not DEVICE_PATTERN.match(value):
        raise InputError(f"--device {requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps.")
    if value == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {value} was requested but no CUDA device is available; use --device cpu.")
        index = int(value.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise InputError(f"--device {value} was requested but this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0.")
    if value == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps was requested but no Apple MPS device is available; use --device cpu.")
    return torch.device(value)


def _offline() -> bool:
    """Whether the Hugging Face hub is off (HF_HUB_OFFLINE), as diffusers and transformers see it."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without a leading class name."""
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    line = text[0].strip() if text else f"an error of kind {type(exc).__name__}"
    return re.sub(r"^[A-Za-z_][\w.]*(Error|Exception)\s*:\s*", "", line, count=1)
