"""Turn a (PIL image, prompt) pair into model inputs for any supported family, without torchvision.

transformers' Qwen and GLM ``Processor`` classes cannot be built without
torchvision (their constructors check a video-processor class), so inputs are
assembled here, in one place, from the family's *PIL* image processor and its
tokenizer: the chat template is applied (or the adapter's placeholder is
prepended when the tokenizer has none), the single image pad token is expanded
to one token per visual token, and ``mm_token_type_ids`` is set where the
family needs it. Everything loads from a local directory; no hub is contacted
unless you pass a hub id yourself.

[`Processor`][attrib.models.inputs.Processor] is what the rest of attrib needs of any input builder: this
module's [`InputBuilder`][attrib.models.inputs.InputBuilder] for Hugging Face checkpoints, or a processor kind
registered with [`attrib.models.register_processor_kind`][attrib.models.loading.register_processor_kind] (the bundled
models' [`attrib.shapes.processor.ShapesProcessor`][attrib.shapes.processor.ShapesProcessor]).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from attrib.io import to_rgb
from attrib.models.adapters import ModelAdapter
from attrib.regions.geometry import GridSpec, get_grid_spec

__all__ = ["InputBuilder", "Processor", "load_image_processor"]


class Processor(Protocol):
    """What attrib needs of a model's input builder.

    Attributes:
        tokenizer: The model's tokenizer (``decode`` keeps special tokens, for span segmentation).
    """

    tokenizer: Any

    def build(
        self, image: Image.Image, prompt: str, answer: str | None = None, *, system: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Batch-1 model inputs for one image and prompt (``answer`` appended for teacher forcing;
        ``system`` placed before the user turn)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Generated ids -> display text."""
        ...

    def grid_spec(self) -> GridSpec:
        """The pixel -> visual-token grid of this processor's images."""
        ...


def load_image_processor(kind: str, path: str | Path | None = None, **kwargs: Any) -> Any:
    """A PIL-backend image processor of ``kind`` (from ``path`` when given).

    Args:
        kind: ``"qwen2_vl"``, ``"glm4v"``, ``"clip"``, ``"gemma3"`` or ``"got_ocr2"``.
        path: A local model directory (or hub id) holding ``preprocessor_config.json``.
        **kwargs: Constructor overrides when ``path`` is ``None``.

    Raises:
        ValueError: For an unknown kind.
    """
    cls: Any
    if kind == "qwen2_vl":
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        cls = Qwen2VLImageProcessorPil
    elif kind == "glm4v":
        from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

        cls = Glm4vImageProcessorPil
    elif kind == "clip":
        from transformers import CLIPImageProcessor

        cls = CLIPImageProcessor
    elif kind == "gemma3":
        from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

        cls = Gemma3ImageProcessorPil
    elif kind == "got_ocr2":
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

        cls = GotOcr2ImageProcessorPil
    else:
        raise ValueError(f"unknown image processor kind {kind!r}; choose qwen2_vl, glm4v, clip, gemma3 or got_ocr2")
    if path is not None:
        return cls.from_pretrained(path)
    return cls(**kwargs)


class InputBuilder:
    """Builds batch-1 model inputs for one family (a [`Processor`][attrib.models.inputs.Processor]).

    Args:
        adapter: The family's [`ModelAdapter`][attrib.models.adapters.ModelAdapter].
        tokenizer: The model's tokenizer (with its chat template, if any).
        image_processor: A PIL-backend image processor (see
            [`load_image_processor`][attrib.models.inputs.load_image_processor]).
        tokens_per_image: Square-grid families: visual tokens per image (``side ** 2``).

    Raises:
        ValueError: If the tokenizer lacks the family's image tokens.
    """

    def __init__(
        self, adapter: ModelAdapter, tokenizer: Any, image_processor: Any, *, tokens_per_image: int | None = None
    ) -> None:
        self.adapter = adapter
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.tokens_per_image = tokens_per_image
        self.pad_id = self._token(adapter.pad_token)
        self.marker_id = self._token(adapter.marker)
        head, _, tail = adapter.image_sequence.partition("{pads}")
        self._head = list(tokenizer.encode(head, add_special_tokens=False)) if head else []
        self._tail = list(tokenizer.encode(tail, add_special_tokens=False)) if tail else []

    def _token(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(tid, int) or tid == self.tokenizer.unk_token_id:
            raise ValueError(f"tokenizer lacks the image token {token!r} of family {self.adapter.family}")
        return tid

    @classmethod
    def from_pretrained(cls, adapter: ModelAdapter, path: str | Path, config: Any = None) -> InputBuilder:
        """Load tokenizer and image processor from a local directory (or hub id).

        Args:
            adapter: The family's adapter.
            path: Checkpoint directory or hub id.
            config: The model's config (square-grid families: the visual tokens per image).
        """
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        ip = load_image_processor(adapter.image_processor, path)
        n = None
        if adapter.grid_source == "square" and config is not None:
            n = adapter.square_side(config) ** 2
        return cls(adapter, tok, ip, tokens_per_image=n)

    def prompt_text(self, prompt: str, system: str | None = None) -> str:
        """The prompt with the chat template applied (a system turn first when given) and one image marker."""
        a = self.adapter
        if getattr(self.tokenizer, "chat_template", None):
            msgs: Any = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            if system:
                msgs.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
            text = str(self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
            if a.marker in text:
                return text
        return (f"{system}\n" if system else "") + a.image_placeholder + prompt

    def __call__(
        self, image: Image.Image | None, prompt: str, answer: str | None = None, *, system: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Model inputs for one image and one prompt (see [`build`][attrib.models.inputs.InputBuilder.build])."""
        return self.build(image, prompt, answer, system=system)  # type: ignore[arg-type]

    def _pixels(self, img: Image.Image) -> tuple[dict[str, torch.Tensor], int]:
        """The image processor's tensors and the number of visual tokens."""
        kind = self.adapter.image_processor
        if self.adapter.grid_source == "square":
            # One tile per image: InternVL's tiling and Gemma 3's pan-and-scan add crops whose tokens the
            # single square grid of the regions does not describe.
            kw: dict[str, Any] = (
                {"crop_to_patches": False}
                if kind == "got_ocr2"
                else {"do_pan_and_scan": False}
                if kind == "gemma3"
                else {}
            )
            vis = self.image_processor(images=[img], return_tensors="pt", **kw)
            return {"pixel_values": vis["pixel_values"]}, self.tokens_per_image or 576
        vis = self.image_processor(images=[img], return_tensors="np")
        grid = np.asarray(vis["image_grid_thw"])
        merge = int(getattr(self.image_processor, "merge_size", 2))
        out = {
            "pixel_values": torch.from_numpy(np.asarray(vis["pixel_values"], dtype=np.float32)),
            "image_grid_thw": torch.from_numpy(grid.astype(np.int64)),
        }
        return out, int(np.prod(grid[0])) // merge**2

    def build(
        self, image: Image.Image, prompt: str, answer: str | None = None, *, system: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Model inputs for one image and one prompt.

        Args:
            image: The image.
            prompt: The user's question.
            answer: Assistant text appended after the prompt (teacher forcing), or ``None``.
            system: A system prompt, placed before the user turn by the chat template.

        Raises:
            ValueError: If ``image`` is ``None`` or the prompt text already holds image tokens.
        """
        if image is None:
            raise ValueError("a prompt with no image: attrib attributes reasoning to image regions")
        a = self.adapter
        for token in {a.pad_token, a.marker}:
            if token in prompt:
                raise ValueError(f"the prompt must not contain {token!r} itself; pass the image separately")
        out, n = self._pixels(to_rgb(image))
        ids = list(self.tokenizer.encode(self.prompt_text(prompt, system), add_special_tokens=False))
        pos = [i for i, t in enumerate(ids) if t == self.marker_id]
        if len(pos) != 1:
            raise ValueError(f"expected one image placeholder in the prompt, found {len(pos)}")
        j = pos[0]
        ids = ids[:j] + self._head + [self.pad_id] * n + self._tail + ids[j + 1 :]
        if answer is not None:
            ids = ids + list(self.tokenizer.encode(answer, add_special_tokens=False))
        t = torch.tensor([ids])
        out["input_ids"] = t
        out["attention_mask"] = torch.ones_like(t)
        if a.token_type_key is not None:
            out[a.token_type_key] = (t == self.pad_id).long()
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Generated ids -> text, special tokens dropped."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def grid_spec(self) -> GridSpec:
        """The visual-token grid of this builder's images (see ``ModelAdapter.grid_from_processor``).

        Raises:
            ValueError: If the processor's canvas is not a whole number of tokens per side.
        """
        a = self.adapter
        if not a.grid_from_processor:
            return get_grid_spec(a.grid_spec_name)
        ip = self.image_processor
        size: Any = ip.size
        if a.grid_source == "grid_thw":
            lo = size["shortest_edge"] if isinstance(size, dict) else size.shortest_edge
            hi = size["longest_edge"] if isinstance(size, dict) else size.longest_edge
            return GridSpec(
                a.family,
                int(ip.patch_size),
                int(getattr(ip, "merge_size", 2)),
                "smart",
                min_pixels=int(lo),
                max_pixels=int(hi),
                temporal_factor=a.grid_temporal_factor,
            )
        side = round((self.tokens_per_image or 576) ** 0.5)
        if a.image_processor == "clip":
            crop: Any = ip.crop_size
            canvas = int(crop["height"] if isinstance(crop, dict) else crop.height)
            rule = "shortest_edge_crop"
        else:
            canvas = int(size["height"] if isinstance(size, dict) else size.height)
            rule = "stretch"
        if canvas % side:
            raise ValueError(f"{a.family}: a {canvas}-px canvas does not split into {side} tokens per side")
        return GridSpec(a.family, canvas // side, 1, rule, crop_size=canvas)  # type: ignore[arg-type]
