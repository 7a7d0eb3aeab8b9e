"""Models: family adapters (architectures as data), input building, loading and signatures.

[`load`][attrib.models.loading.load] is the one way attrib loads a model, whatever it is: a bundled
name, a local checkpoint directory (a research variant's included) or a hub id.
"""

from attrib.models.adapters import (
    ADAPTERS,
    CHECKPOINTS,
    ModelAdapter,
    adapter_for,
    adapter_for_config,
    get_adapter,
    register_adapter,
    register_checkpoint,
)
from attrib.models.inputs import InputBuilder, Processor, load_image_processor
from attrib.models.loading import (
    MODEL_KINDS,
    NAMED_MODELS,
    PROCESSOR_KINDS,
    LoadedModel,
    ModelKind,
    NamedModel,
    ProcessorKind,
    answer_after_think,
    default_model_name,
    detect_model_kind,
    get_named_model,
    load,
    load_processor,
    register_model_kind,
    register_named_model,
    register_processor_kind,
    resolve_path,
)
from attrib.models.signature import (
    SIGNATURE_VERSION,
    embeddings_signature,
    model_signature,
    same_model,
    weight_files,
    weights_fingerprint,
)

__all__ = [
    "ADAPTERS",
    "CHECKPOINTS",
    "MODEL_KINDS",
    "NAMED_MODELS",
    "PROCESSOR_KINDS",
    "SIGNATURE_VERSION",
    "InputBuilder",
    "LoadedModel",
    "ModelAdapter",
    "ModelKind",
    "NamedModel",
    "Processor",
    "ProcessorKind",
    "adapter_for",
    "adapter_for_config",
    "answer_after_think",
    "default_model_name",
    "detect_model_kind",
    "embeddings_signature",
    "get_adapter",
    "get_named_model",
    "load",
    "load_image_processor",
    "load_processor",
    "model_signature",
    "register_adapter",
    "register_checkpoint",
    "register_model_kind",
    "register_named_model",
    "register_processor_kind",
    "resolve_path",
    "same_model",
    "weight_files",
    "weights_fingerprint",
]
