"""One home for loading models: named (bundled) models, local checkpoint directories and hub ids.

[`load`][attrib.models.loading.load] returns a [`LoadedModel`][attrib.models.loading.LoadedModel]: the model, its input
builder
([`Processor`][attrib.models.inputs.Processor]), its family adapter and visual-token
grid, its decoders, its answer parser and (computed on first use) its signature.

Three registries, filled by plugins (see [`attrib.plugins`][attrib.plugins]), let the core
load what it does not know:

- named models ([`register_named_model`][attrib.models.loading.register_named_model]): names such as ``shapes-qwen25vl``
  that resolve to a directory, with their default estimator, flagger and dataset;
- model kinds ([`register_model_kind`][attrib.models.loading.register_model_kind]): checkpoint directories that are not
  plain transformers checkpoints (the research variants), detected by their files;
- processor kinds ([`register_processor_kind`][attrib.models.loading.register_processor_kind]): input builders named in
a
  directory's ``attrib_processor.json`` (the bundled models' word-level processor).

Anything else is a transformers checkpoint of a supported family, loaded with
``AutoModelForImageTextToText`` under SDPA and an [`InputBuilder`][attrib.models.inputs.InputBuilder].
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from attrib.models.adapters import ModelAdapter, adapter_for, adapter_for_config
from attrib.models.inputs import InputBuilder, Processor
from attrib.models.signature import model_signature, weight_files
from attrib.plugins import load_plugins
from attrib.regions.geometry import GridSpec

__all__ = [
    "MODEL_KINDS",
    "NAMED_MODELS",
    "PROCESSOR_KINDS",
    "LoadedModel",
    "ModelKind",
    "NamedModel",
    "ProcessorKind",
    "answer_after_think",
    "check_checkpoint_dir",
    "check_model",
    "default_model_name",
    "detect_model_kind",
    "get_named_model",
    "load",
    "load_processor",
    "parse_device",
    "processor_dataset",
    "register_model_kind",
    "register_named_model",
    "register_processor_kind",
    "resolve_path",
]

logger = logging.getLogger(__name__)

_ANSWER = re.compile(r"^\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*(.+?)\s*\.?\s*$", re.IGNORECASE | re.S)


def answer_after_think(text: str) -> str | None:
    """The final answer of a thinking trace: the text after ``</think>`` (``None`` when empty).

    ``"The answer is X."`` gives ``"X"``; any other text is returned stripped.
    """
    tail = text.split("</think>")[-1].strip()
    if not tail:
        return None
    m = _ANSWER.match(tail)
    return m.group(1).strip() if m else tail


@dataclass(frozen=True)
class NamedModel:
    """A model known by name (the bundled ones).

    Attributes:
        name: The name users pass (``--model NAME``).
        path: Resolves the model's directory (raises ``FileNotFoundError`` with a rebuild hint).
        estimator: Path stem of its default estimator, relative to its directory (``None``: none ships).
        flagger: File of its calibrated failure flagger, relative to its directory (``None``: none).
        dataset: Dataset spec of its demo and live-view examples (e.g. ``"shapes:test"``).
        default: The model loaded when none is named.
        description: One line for ``attrib info``.
    """

    name: str
    path: Callable[[], Path]
    estimator: str | None = "estimator"
    flagger: str | None = None
    dataset: str | None = None
    default: bool = False
    description: str = ""


@dataclass(frozen=True)
class ModelKind:
    """A kind of checkpoint directory that ``AutoModel`` cannot load as it is (a research variant).

    Attributes:
        name: The kind's name; also the name of its [`attrib.variants.Variant`][attrib.variants.registry.Variant].
        detect: ``detect(directory) -> bool``.
        load: ``load(directory, *, dtype) -> model`` (the wrapper module, eval mode).
        description: What it is, for messages.
    """

    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., Any]
    description: str = ""


@dataclass(frozen=True)
class ProcessorKind:
    """An input builder named in a checkpoint directory's ``attrib_processor.json``.

    Attributes:
        name: The ``class`` recorded in ``attrib_processor.json``.
        load: ``load(directory) -> Processor``.
        parse_answer: The final answer of a model using it (default
            [`answer_after_think`][attrib.models.loading.answer_after_think]).
        dataset: The dataset spec of the examples such models were made for (their default
            examples for the demo, the live view and ``attrib norms``).
    """

    name: str
    load: Callable[[Path], Processor]
    parse_answer: Callable[[str], str | None] | None = None
    dataset: str | None = None


NAMED_MODELS: dict[str, NamedModel] = {}
MODEL_KINDS: dict[str, ModelKind] = {}
PROCESSOR_KINDS: dict[str, ProcessorKind] = {}


def _register(table: dict[str, Any], name: str, entry: Any, what: str) -> Any:
    if name in table:
        raise ValueError(f"{what} {name!r} is already registered")
    table[name] = entry
    return entry


def register_named_model(entry: NamedModel) -> NamedModel:
    """Register a named model; a name already registered (or a second default) is refused."""
    if entry.default and any(m.default for m in NAMED_MODELS.values()):
        raise ValueError(f"a default model is already registered; {entry.name!r} cannot be one too")
    return _register(NAMED_MODELS, entry.name, entry, "named model")  # type: ignore[no-any-return]


def register_model_kind(kind: ModelKind) -> ModelKind:
    """Register a checkpoint-directory kind; duplicates are refused."""
    return _register(MODEL_KINDS, kind.name, kind, "model kind")  # type: ignore[no-any-return]


def register_processor_kind(kind: ProcessorKind) -> ProcessorKind:
    """Register an input-builder kind; duplicates are refused."""
    return _register(PROCESSOR_KINDS, kind.name, kind, "processor kind")  # type: ignore[no-any-return]


def get_named_model(name: str) -> NamedModel | None:
    """The named model ``name`` (plugins loaded first), or ``None``."""
    load_plugins()
    return NAMED_MODELS.get(name)


def default_model_name() -> str:
    """The name of the default model (the bundled one).

    Raises:
        ValueError: If no plugin registered a default model.
    """
    load_plugins()
    for m in NAMED_MODELS.values():
        if m.default:
            return m.name
    raise ValueError("no default model is registered; pass a model name, directory or hub id")


def detect_model_kind(path: str | Path) -> ModelKind | None:
    """The registered kind of checkpoint directory ``path`` holds, or ``None`` for a plain checkpoint."""
    load_plugins()
    p = Path(path)
    for kind in MODEL_KINDS.values():
        if kind.detect(p):
            return kind
    return None


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def resolve_path(name_or_path: str | Path | None) -> Path | str:
    """A named model's directory, a local directory, or the hub id itself.

    Raises:
        FileNotFoundError: For a missing local path or missing bundled files.
    """
    name = str(name_or_path) if name_or_path is not None else default_model_name()
    named = get_named_model(name)
    if named is not None:
        return named.path()
    p = Path(name).expanduser()
    if p.exists():
        return p
    if _looks_local(name):
        raise FileNotFoundError(f"model directory not found: {name}")
    if "/" not in name:
        # Hub ids are org/name; a bare word is a typo of a bundled name or a missing directory.
        known = ", ".join(sorted(NAMED_MODELS)) or "none"
        raise FileNotFoundError(
            f"unknown model {name!r}: not a bundled model ({known}), not a directory here, and not a hub id (org/name)"
        )
    return name


def processor_dataset(path: str | Path) -> str | None:
    """The dataset spec a checkpoint directory's ``attrib_processor.json`` records (``"dataset"``), if any."""
    marker = Path(path) / "attrib_processor.json"
    try:
        spec = json.loads(marker.read_text()).get("dataset")
    except (OSError, ValueError, AttributeError):
        return None
    return spec if isinstance(spec, str) and spec else None


def load_processor(path: str | Path, config: Any = None) -> tuple[Processor, ProcessorKind | None]:
    """The input builder of a checkpoint directory (or hub id).

    A directory with ``attrib_processor.json`` uses the processor kind it names;
    anything else gets an [`InputBuilder`][attrib.models.inputs.InputBuilder] for its family.

    Raises:
        ValueError: For an unknown processor kind or an unsupported architecture.
    """
    p = Path(path)
    marker = p / "attrib_processor.json"
    if marker.is_file():
        try:
            cls = json.loads(marker.read_text())["class"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"corrupt {marker}: {e}") from e
        load_plugins()
        kind = PROCESSOR_KINDS.get(cls)
        if kind is None:
            raise ValueError(
                f"{p} uses the processor {cls!r}, which no installed plugin provides; known: {sorted(PROCESSOR_KINDS)}"
            )
        return kind.load(p), kind
    if config is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
    return InputBuilder.from_pretrained(adapter_for_config(config), path, config), None


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | str:
    """A torch dtype, or ``"auto"`` (the checkpoint's own)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(names)} or auto")
    return names[dtype]


def _checkpoint_dtype(path: Path) -> torch.dtype:
    """The dtype a checkpoint directory's config records (float32 when it records none)."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return torch.float32
    name = cfg.get("dtype") or cfg.get("torch_dtype") or (cfg.get("text_config") or {}).get("dtype")
    dt = getattr(torch, str(name), None) if name else None
    return dt if isinstance(dt, torch.dtype) else torch.float32


def parse_device(device: str | torch.device | None) -> torch.device | str | None:
    """Check a device option before any weights load.

    Args:
        device: ``None`` (CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, a ``torch.device``, or
            ``"auto"`` (accelerate's ``device_map="auto"``: the model spread over the visible GPUs, then CPU).

    Returns:
        A ``torch.device``, ``"auto"``, or ``None``.

    Raises:
        ValueError: For an unknown device, a GPU this torch cannot see, or ``auto`` without accelerate.
    """
    if device is None or isinstance(device, torch.device):
        dev = device
    elif str(device) in ("auto", "device_map"):
        if importlib.util.find_spec("accelerate") is None:
            raise ValueError("--device auto places the model with accelerate's device_map: pip install accelerate")
        return "auto"
    else:
        try:
            dev = torch.device(str(device))
        except RuntimeError:
            raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N, mps or auto") from None
    if dev is not None and dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"device {device} asked for, but torch ({build}) sees no CUDA device: use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {device} asked for, but torch sees {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    if dev is not None and dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device mps asked for, but this torch has no MPS backend: use --device cpu")
    return dev


def check_checkpoint_dir(path: Path) -> None:
    """Refuse a directory that is not a whole checkpoint of a supported family, before anything loads (cheap:
    the config is read, no weights).

    Raises:
        ValueError: Without ``config.json``, for an unreadable config or an unsupported architecture, without
            weight files, or with shards its index names missing.
    """
    from transformers import AutoConfig

    if not path.is_dir():
        raise ValueError(f"{path} is not a model checkpoint directory")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a model checkpoint: it has no config.json")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read the config of {path}: {_one_line(e)}") from e
    adapter_for_config(config)
    files = weight_files(path)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ValueError(
            f"checkpoint {path} is missing {len(missing)} weight shard(s) named in its index: {', '.join(missing[:3])}"
            + (" ..." if len(missing) > 3 else "")
        )
    if not files and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ValueError(f"{path} is not a model checkpoint: it has a config.json but no weight files")


def check_model(name_or_path: str | Path | None) -> None:
    """Check a model argument before any work: a named model, a hub id, or a whole checkpoint directory.

    Raises:
        FileNotFoundError: For a local path that does not exist.
        ValueError: For a directory that is not a whole checkpoint (see
            [`check_checkpoint_dir`][attrib.models.loading.check_checkpoint_dir]).
    """
    load_plugins()
    where = resolve_path(str(name_or_path) if name_or_path is not None else default_model_name())
    if isinstance(where, Path) and detect_model_kind(where) is None:
        check_checkpoint_dir(where)


def _load_transformers(path: str | Path, dtype: torch.dtype | str, local: bool, device_map: str | None = None) -> Any:
    from transformers import AutoConfig, AutoModelForImageTextToText

    if local:
        check_checkpoint_dir(Path(path))
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=local)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read the config of {path}: {_one_line(e)}") from e
    adapter_for_config(config)  # an unsupported architecture fails here, before weights load
    extra: dict[str, Any] = {} if device_map is None else {"device_map": device_map}
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype, attn_implementation="sdpa", local_files_only=local, **extra
        )
    except Exception as e:  # safetensors and transformers raise several types for bad files
        raise ValueError(f"cannot load model weights from {path}: {type(e).__name__}: {_one_line(e)}") from e
    return model


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (library messages often span several)."""
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


@dataclass
class LoadedModel:
    """A loaded model with everything the pipeline needs to run it.

    Attributes:
        name: The name or path it was loaded from.
        model: The model (a transformers model, or a research-variant wrapper), in eval mode.
        processor: Its input builder.
        variant: ``"plain"``, or the registered model kind (``"pointcopy"``, ``"latent"``).
        path: Its checkpoint directory (``None`` for a hub id).
        named: The named-model entry, when loaded by name.
        parse_answer: Generated text -> final answer.
        processor_kind: The registered processor kind, when the directory names one.
    """

    name: str
    model: Any
    processor: Processor
    variant: str = "plain"
    path: Path | None = None
    named: NamedModel | None = None
    parse_answer: Callable[[str], str | None] = field(default=answer_after_think)
    processor_kind: ProcessorKind | None = None

    @property
    def default_dataset(self) -> str | None:
        """The dataset spec of this model's default examples: its named entry's, else the one its directory's
        ``attrib_processor.json`` records (``"dataset"``), else its processor kind's."""
        if self.named is not None and self.named.dataset is not None:
            return self.named.dataset
        if self.path is not None:
            recorded = processor_dataset(self.path)
            if recorded is not None:
                return recorded
        return self.processor_kind.dataset if self.processor_kind is not None else None

    @property
    def hf_model(self) -> Any:
        """The transformers model (the wrapper's ``base`` for research variants)."""
        base = getattr(self.model, "base", None)
        return base if base is not None and hasattr(base, "config") else self.model

    @property
    def adapter(self) -> ModelAdapter:
        """The family adapter."""
        return adapter_for(self.hf_model)

    @property
    def family(self) -> str:
        """The family name (``qwen2_5_vl``, ...)."""
        return self.adapter.family

    @property
    def dims(self) -> tuple[int, int]:
        """``(L, H)`` of the language model."""
        n_layers, n_heads, _ = self.adapter.dims(self.hf_model)
        return n_layers, n_heads

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings (the parameters' device, unless the model is
        spread over devices with ``device="auto"``)."""
        if getattr(self.hf_model, "hf_device_map", None):
            emb = self.hf_model.get_input_embeddings()
            return emb.weight.device  # type: ignore[no-any-return]
        return next(self.model.parameters()).device

    @cached_property
    def grid_spec(self) -> GridSpec:
        """The pixel -> visual-token grid of the processor's images."""
        return self.processor.grid_spec()

    @cached_property
    def signature(self) -> dict[str, Any]:
        """[`model_signature`][attrib.models.signature.model_signature] of the model (computed once)."""
        return model_signature(self.model, self.path)

    @property
    def eos_token_id(self) -> int | None:
        """The tokenizer's end-of-sequence id."""
        e = getattr(self.processor.tokenizer, "eos_token_id", None)
        return None if e is None else int(e)

    def build(
        self, image: Image.Image, prompt: str, answer: str | None = None, *, system: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Batch-1 inputs for ``image`` and ``prompt`` (a system prompt first when given), on the model's device."""
        x = self.processor.build(image, prompt, answer, system=system)
        dev = self.device
        return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in x.items()}

    def decode(self, ids: Sequence[int]) -> str:
        """Generated ids -> display text."""
        return self.processor.decode(list(ids))

    def decode_raw(self, ids: Sequence[int]) -> str:
        """Generated ids -> text with special tokens kept (what span segmentation reads)."""
        return str(self.processor.tokenizer.decode(list(ids)))

    def default_estimator(self) -> Path | None:
        """The path stem of the estimator that ships with this model, if any."""
        if self.named is None or self.named.estimator is None or self.path is None:
            return None
        p = self.path / self.named.estimator
        return p if p.with_suffix(".safetensors").is_file() else None

    def default_flagger(self) -> Path | None:
        """The calibrated failure flagger that ships with this model, if any."""
        if self.named is None or self.named.flagger is None or self.path is None:
            return None
        p = self.path / self.named.flagger
        return p if p.is_file() else None


def load(
    name_or_path: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> LoadedModel:
    """Load a model by name (bundled), local checkpoint directory or hub id.

    Args:
        name_or_path: A named model (``None``: the default one), a directory or a hub id.
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"``, ``"mps"``, a ``torch.device``, or ``"auto"``
            (accelerate's ``device_map="auto"``; research variants go to the first GPU, else CPU).
        dtype: ``float32`` (default), ``bfloat16``, ``float16`` or ``auto`` (the checkpoint's own).

    Raises:
        FileNotFoundError: For a local path that does not exist.
        ValueError: For a directory that is not a checkpoint, an unsupported
            architecture, an unknown processor or corrupt files.
    """
    load_plugins()
    dt = _dtype(dtype)
    dev = parse_device(device)
    device_map = "auto" if dev == "auto" else None
    name = str(name_or_path) if name_or_path is not None else default_model_name()
    named = NAMED_MODELS.get(name)
    where = resolve_path(name)
    path: Path | None = None
    parse: Callable[[str], str | None] = answer_after_think
    variant = "plain"
    pkind: ProcessorKind | None = None
    if isinstance(where, Path):
        path = where
        if not path.is_dir():
            raise ValueError(f"{path} is not a model checkpoint directory")
        kind = detect_model_kind(path)
        if kind is not None:
            model = kind.load(path, dtype=_checkpoint_dtype(path) if dt == "auto" else dt)
            variant = kind.name
        else:
            model = _load_transformers(path, dt, local=True, device_map=device_map)
        hf = getattr(model, "base", None) if kind is not None else model
        processor, pkind = load_processor(path, getattr(hf, "config", None))
        if pkind is not None and pkind.parse_answer is not None:
            parse = pkind.parse_answer
    else:
        model = _load_transformers(where, dt, local=False, device_map=device_map)
        processor, _ = load_processor(where, model.config)
    if isinstance(dev, torch.device):
        model = model.to(dev)
    elif dev == "auto" and getattr(model, "hf_device_map", None) is None:
        model = model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    loaded = LoadedModel(
        name=name,
        model=model,
        processor=processor,
        variant=variant,
        path=path,
        named=named,
        parse_answer=parse,
        processor_kind=pkind,
    )
    _check_image_token(loaded)
    return loaded


def _check_image_token(loaded: LoadedModel) -> None:
    hf = loaded.hf_model
    want = loaded.adapter.image_token_id(hf)
    tid = getattr(loaded.processor, "image_token_id", None)
    if tid is None:
        tid = getattr(loaded.processor, "pad_id", None)
    if tid is not None and int(tid) != want:
        raise ValueError(
            f"model {loaded.name} expects image token id {want}, its processor gives {tid}: the files disagree"
        )
