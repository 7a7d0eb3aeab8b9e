"""The bundled model's local processor: a word-level tokenizer plus a Qwen2-VL image processor.

transformers' ``Qwen2_5_VLProcessor`` cannot be constructed without torchvision
(its constructor checks a video-processor class). This module is the one place
where Qwen-family multimodal inputs are assembled by hand instead: the image
processor patchifies, the prompt's single ``<|image_pad|>`` is expanded to one
token per merged patch (``grid_t * grid_h * grid_w / merge_size**2``), and
``mm_token_type_ids`` marks those tokens with 1, as transformers 5.x requires.

Nothing here contacts a model hub: both halves save to and load from a local
directory with the standard ``save_pretrained`` / ``from_pretrained`` calls.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from attrib.io import to_rgb

__all__ = [
    "IMAGE_PAD",
    "SPECIAL_TOKENS",
    "ShapesProcessor",
    "build_tokenizer",
    "token_id",
]

logger = logging.getLogger(__name__)

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
THINK, END_THINK = "<think>", "</think>"
PAD, UNK = "<|endoftext|>", "<unk>"
#: Special tokens, in id order (ids 0..len-1).
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD,
    UNK,
    IM_START,
    IM_END,
    VISION_START,
    VISION_END,
    IMAGE_PAD,
    VIDEO_PAD,
    THINK,
    END_THINK,
)

#: The chat template: one user turn holding an image and a question, then the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] }}"
    "{% if message['content'] is string %}{{ ' ' + message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ ' ' + part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant' }}{% endif %}"
)

_SPACE = "\u2581"


def build_tokenizer(words: Iterable[str], extra_special: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """Build the word-level tokenizer of the bundled model.

    Words are split on spaces (Metaspace) and punctuation is isolated, so the
    decoder restores the original spacing exactly.

    Args:
        words: The word vocabulary (punctuation included), without specials.
        extra_special: Further special tokens (e.g. the point-and-copy variant's
            ``<region>``, ``</region>``, ``<|copy|>``), given ids after every word so
            the ids of the base vocabulary do not move.

    Returns:
        A ``PreTrainedTokenizerFast`` with the chat template set.
    """
    vocab: dict[str, int] = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in sorted(set(words)):
        piece = w if not w[0].isalnum() else _SPACE + w
        if piece not in vocab:
            vocab[piece] = len(vocab)
    for t in extra_special:
        if t in vocab:
            raise ValueError(f"extra special token {t!r} is already in the vocabulary")
        vocab[t] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="always", split=True),
            pre_tokenizers.Punctuation("isolated"),
        ]
    )
    core.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="always", split=True)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=IM_END,
        additional_special_tokens=[t for t in (*SPECIAL_TOKENS, *extra_special) if t not in (PAD, UNK, IM_END)],
        padding_side="left",
        model_max_length=4096,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The single id of ``token``.

    Raises:
        ValueError: If it does not map to exactly one id.
    """
    tid = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(tid, int):
        raise ValueError(f"token {token!r} maps to {tid!r}, not one id")
    return tid


class ShapesProcessor:
    """Turns (image, question[, answer]) into Qwen2.5-VL model inputs (an
    [`attrib.models.Processor`][attrib.models.inputs.Processor]).

    Images of any size are resized by the Qwen2-VL rules (``smart_resize``: both
    sides rounded to multiples of 28, total pixels within
    ``[min_pixels, max_pixels]``, aspect ratio kept).

    Args:
        tokenizer: The word-level tokenizer (see [`build_tokenizer`][attrib.shapes.processor.build_tokenizer]).
        image_processor: A Qwen2-VL image processor (PIL backend).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, image_processor: Qwen2VLImageProcessorPil) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = token_id(tokenizer, IMAGE_PAD)
        self.merge_size = int(image_processor.merge_size)

    @classmethod
    def create(
        cls,
        words: Iterable[str],
        *,
        min_pixels: int = 112 * 112,
        max_pixels: int = 448 * 448,
        extra_special: Sequence[str] = (),
    ) -> ShapesProcessor:
        """Build a fresh processor from a word list.

        Args:
            words: Vocabulary words.
            extra_special: Further special tokens (see [`build_tokenizer`][attrib.shapes.processor.build_tokenizer]).
            min_pixels: Smallest resized image area.
            max_pixels: Largest resized image area.
        """
        ip = Qwen2VLImageProcessorPil(
            min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
        )
        return cls(build_tokenizer(words, extra_special), ip)

    def save_pretrained(self, path: str | Path, *, dataset: str | None = None) -> None:
        """Save tokenizer, chat template and image-processor config to ``path``.

        Args:
            path: The directory.
            dataset: The dataset spec of the examples the model was made for (``"shapes2:test"``), recorded
                for its default examples when it is loaded by path.
        """
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(p)
        self.image_processor.save_pretrained(p)
        marker: dict[str, object] = {"class": "ShapesProcessor", "version": 1}
        if dataset is not None:
            marker["dataset"] = dataset
        (p / "attrib_processor.json").write_text(json.dumps(marker) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ShapesProcessor:
        """Load from a local directory written by
        [`save_pretrained`][attrib.shapes.processor.ShapesProcessor.save_pretrained].

        Raises:
            FileNotFoundError: If the directory or one of its files is missing.
            ValueError: If the files are unreadable.
        """
        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"processor directory not found: {p}")
        for name in ("tokenizer.json", "preprocessor_config.json"):
            if not (p / name).is_file():
                raise FileNotFoundError(f"processor directory {p} lacks {name}")
        try:
            tok = PreTrainedTokenizerFast.from_pretrained(p)
            ip = Qwen2VLImageProcessorPil.from_pretrained(p)
        except (OSError, ValueError, json.JSONDecodeError, Exception) as e:
            raise ValueError(f"corrupt processor files in {p}: {e}") from e
        return cls(tok, ip)

    # ------------------------------------------------------------------ inputs
    def prompt(self, question: str, system: str | None = None) -> str:
        """The chat-formatted prompt text (one unexpanded image pad; a system turn first when given)."""
        msgs: Any = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if system:
            msgs.insert(0, {"role": "system", "content": system})
        out = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return str(out)

    def __call__(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        system: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Build a left-padded batch.

        Args:
            images: One PIL image per example (converted to RGB).
            questions: One question per example.
            answers: Optional assistant outputs; when given, they are appended
                (followed by ``<|im_end|>``) and ``labels`` mask everything else
                with -100, for teacher forcing.
            system: A system prompt for every example (a system turn before the user's).

        Returns:
            ``input_ids``, ``attention_mask``, ``mm_token_type_ids``,
            ``pixel_values``, ``image_grid_thw`` and, with answers, ``labels``.

        Raises:
            ValueError: If the argument lengths disagree or a batch is empty.
        """
        if len(images) != len(questions) or (answers is not None and len(answers) != len(questions)):
            raise ValueError(
                f"batch lengths disagree: {len(images)} images, {len(questions)} questions"
                + ("" if answers is None else f", {len(answers)} answers")
            )
        if not images:
            raise ValueError("empty batch")
        rgb = [to_rgb(im) for im in images]
        fast = self._fast_pixels(rgb)
        vis = fast if fast is not None else self.image_processor(rgb, return_tensors="np")
        grids = np.asarray(vis["image_grid_thw"])
        seqs: list[list[int]] = []
        label_seqs: list[list[int]] = []
        for i, q in enumerate(questions):
            n_img = int(np.prod(grids[i])) // (self.merge_size**2)
            ids = self._expand(self.tokenizer.encode(self.prompt(q, system), add_special_tokens=False), n_img)
            labels = [-100] * len(ids)
            if answers is not None:
                a = [*self.tokenizer.encode(answers[i], add_special_tokens=False), int(self.tokenizer.eos_token_id)]
                ids = ids + a
                labels = labels + a
            seqs.append(ids)
            label_seqs.append(labels)
        width = max(len(s) for s in seqs)
        pad = int(self.tokenizer.pad_token_id)
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        labels_t = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, (s, lab) in enumerate(zip(seqs, label_seqs, strict=True)):
            input_ids[i, width - len(s) :] = torch.tensor(s)
            attn[i, width - len(s) :] = 1
            labels_t[i, width - len(s) :] = torch.tensor(lab)
        out = {
            "input_ids": input_ids,
            "attention_mask": attn,
            "mm_token_type_ids": (input_ids == self.image_token_id).long(),
            "pixel_values": torch.from_numpy(np.asarray(vis["pixel_values"], dtype=np.float32)),
            "image_grid_thw": torch.from_numpy(grids.astype(np.int64)),
        }
        if answers is not None:
            out["labels"] = labels_t
        return out

    def build(
        self, image: Image.Image, prompt: str, answer: str | None = None, *, system: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Batch-1 inputs for one image and question (the [`attrib.models.Processor`][attrib.models.inputs.Processor]
        interface).

        Args:
            image: The image.
            prompt: The question.
            answer: Assistant output appended for teacher forcing (then followed by ``<|im_end|>``).
            system: A system prompt (a system turn before the user's).
        """
        out = self([image], [prompt], None if answer is None else [answer], system=system)
        out.pop("labels", None)
        return out

    def _fast_pixels(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray] | None:
        """The image processor's output, computed in one vectorised pass.

        Applies only when every image already has the size ``smart_resize`` would
        give it (no resampling) and the processor uses the standard rescale,
        normalise and patchify steps; returns ``None`` otherwise, and the caller
        falls back to the image processor. Matches it to float32 rounding (tested).
        """
        ip = self.image_processor
        if not (ip.do_resize and ip.do_rescale and ip.do_normalize) or len({im.size for im in images}) != 1:
            return None
        w, h = images[0].size
        patch, merge, tps = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
        factor = patch * merge
        size: Any = ip.size
        min_px, max_px = getattr(size, "shortest_edge", None), getattr(size, "longest_edge", None)
        if h % factor or w % factor or min_px is None or max_px is None or not min_px <= h * w <= max_px:
            return None
        x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float()
        x = x.mul_(float(ip.rescale_factor))
        x = x.sub_(torch.tensor(ip.image_mean, dtype=torch.float32).view(1, -1, 1, 1))
        x = x.div_(torch.tensor(ip.image_std, dtype=torch.float32).view(1, -1, 1, 1))
        gh, gw = h // patch, w // patch
        b, c = x.shape[0], x.shape[1]
        x = x.reshape(b, c, gh // merge, merge, patch, gw // merge, merge, patch).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.unsqueeze(6).expand(*x.shape[:6], tps, patch, patch)  # (B, gh/m, gw/m, m, m, C, T, ph, pw)
        pixels = x.reshape(b * gh * gw, c * tps * patch * patch).numpy()
        return {"pixel_values": pixels, "image_grid_thw": np.tile(np.array([1, gh, gw], dtype=np.int64), (b, 1))}

    def _expand(self, ids: list[int], n_img: int) -> list[int]:
        pos = [j for j, t in enumerate(ids) if t == self.image_token_id]
        if len(pos) != 1:
            raise ValueError(f"prompt must hold exactly one image placeholder, found {len(pos)}")
        j = pos[0]
        return ids[:j] + [self.image_token_id] * n_img + ids[j + 1 :]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Decode generated ids to text, keeping ``<think>`` tags, dropping pad/end tokens."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        drop = {int(self.tokenizer.pad_token_id), int(self.tokenizer.eos_token_id)}
        return str(self.tokenizer.decode([int(t) for t in ids if int(t) not in drop])).strip()

    def grid_spec(self) -> Any:
        """The [`GridSpec`][attrib.regions.geometry.GridSpec] of this processor's visual tokens."""
        from attrib.regions.geometry import GridSpec

        size = self.image_processor.size
        lo = size["shortest_edge"] if isinstance(size, dict) else size.shortest_edge
        hi = size["longest_edge"] if isinstance(size, dict) else size.longest_edge
        patch = int(self.image_processor.patch_size)
        return GridSpec("shapes_processor", patch, self.merge_size, "smart", min_pixels=int(lo), max_pixels=int(hi))

    def token_ids(self) -> dict[str, int]:
        """Ids of the special tokens, keyed by token."""
        return {t: token_id(self.tokenizer, t) for t in SPECIAL_TOKENS}

    def config_kwargs(self) -> dict[str, Any]:
        """Token-id fields a Qwen2.5-VL config needs to match this processor."""
        ids = self.token_ids()
        return {
            "image_token_id": ids[IMAGE_PAD],
            "video_token_id": ids[VIDEO_PAD],
            "vision_start_token_id": ids[VISION_START],
            "vision_end_token_id": ids[VISION_END],
            "pad_token_id": ids[PAD],
            "eos_token_id": ids[IM_END],
            "bos_token_id": ids[IM_START],
        }
