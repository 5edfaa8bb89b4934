"""Evaluation metrics of edited images, as in the paper's Table 1, computed with libraries.

* CLIP score of the edited image against the target prompt (torchmetrics' ``clip_score``: ``max(100 cos, 0)``),
  with CLIP ViT-L/14 (``openai/clip-vit-large-patch14``, the paper's evaluation CLIP) or any local CLIP folder;
* MS-SSIM (``pytorch_msssim``) and LPIPS (the ``lpips`` package, AlexNet by default) against the input image;
* PSNR (torchmetrics) against the input image.

Similarity metrics are computed on the whole image and on the non-edited region (the complement of the union of the
edit masks). For MS-SSIM and LPIPS, whose windows and receptive fields span the image, the edited region is blacked
out in both images (as PIE-Bench's evaluation does); PSNR on a region is the PSNR of the mean squared error over the
region's pixels only.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch


logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_LPIPS_NET",
    "CLIPScorer",
    "EditScorer",
    "LPIPSScorer",
    "ms_ssim",
    "ms_ssim_window",
    "psnr",
    "to_tensor",
]

#: The paper's evaluation CLIP (appendix A.2: "the CLIP large model for quantitative evaluation").
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
#: LPIPS backbone (the LPIPS authors' recommended "forward" metric).
DEFAULT_LPIPS_NET = "alex"
_MS_SSIM_SCALES = 5  # pytorch_msssim downsamples 4 times between its 5 scales


def to_tensor(image: Any) -> torch.Tensor:
    """An RGB image (PIL, numpy ``(H, W, 3)`` uint8 or float in [0, 1], or a tensor ``(3, H, W)``/``(1, 3, H, W)``
    in [0, 1]) as a float tensor ``(1, 3, H, W)`` in ``[0, 1]``."""
    if isinstance(image, PIL.Image.Image):
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"`image` as a numpy array must be (H, W, 3), got {array.shape}.")
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        tensor = tensor.float() / 255.0 if not np.issubdtype(array.dtype, np.floating) else tensor.float()
        return tensor[None].clamp(0, 1)
    if isinstance(image, torch.Tensor):
        tensor = image.detach().float()
        if tensor.ndim == 3:
            tensor = tensor[None]
        if tensor.ndim != 4 or tensor.shape[:2] != (1, 3):
            raise ValueError(f"`image` as a tensor must be (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}.")
        return tensor.clamp(0, 1)
    raise ValueError(f"`image` must be a PIL image, a numpy array or a tensor, got {type(image).__name__}.")


def _keep_mask(mask: Any, like: torch.Tensor) -> torch.Tensor:
    """The non-edited region ``(1, 1, H, W)`` (1 = keep) from an edit mask (1 = edited) of any type and size."""
    from pipeline_oir import mask_to_tensor

    edited = mask_to_tensor(mask)[None, None].to(like.device)
    if edited.shape[-2:] != like.shape[-2:]:
        edited = torch.nn.functional.interpolate(edited, size=like.shape[-2:], mode="nearest")
    return 1.0 - (edited >= 0.5).float()


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = to_tensor(a), to_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"the two images must have the same size, got {tuple(a.shape[-2:])} and {tuple(b.shape[-2:])}.")
    return a, b


def psnr(image: Any, reference: Any, mask: Any | None = None) -> float:
    """PSNR in dB (data range 1) of ``image`` against ``reference``; over the non-edited region only when ``mask``
    (1 = edited) is given. Identical images give ``inf``; an empty region gives ``nan``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = _pair(image, reference)
    if mask is not None:
        keep = _keep_mask(mask, a).expand_as(a).bool()
        if not keep.any():
            return float("nan")
        a, b = a[keep], b[keep]
    return float(peak_signal_noise_ratio(a, b, data_range=1.0))


def ms_ssim_window(size: int, win_size: int = 11) -> int:
    """The Gaussian window of MS-SSIM for images whose smaller side is ``size``: the standard 11 where the 5 scales
    allow it, else the largest odd window that fits (small test images); at least 3."""
    while win_size > 3 and size <= (win_size - 1) * 2 ** (_MS_SSIM_SCALES - 1):
        win_size -= 2
    if size <= (win_size - 1) * 2 ** (_MS_SSIM_SCALES - 1):
        raise ValueError(f"MS-SSIM needs images larger than {(win_size - 1) * 16} pixels a side, got {size}.")
    return win_size


def ms_ssim(image: Any, reference: Any, mask: Any | None = None, win_size: int | None = None) -> float:
    """MS-SSIM (``pytorch_msssim``, data range 1) of ``image`` against ``reference``; with ``mask`` (1 = edited),
    of the two images with the edited region blacked out in both. ``win_size`` defaults to 11, smaller for images
    below 161 pixels a side (see :func:`ms_ssim_window`)."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    a, b = _pair(image, reference)
    if mask is not None:
        keep = _keep_mask(mask, a)
        a, b = a * keep, b * keep
    size = min(a.shape[-2:])
    if win_size is None:
        win_size = ms_ssim_window(size)
        if win_size != 11:
            logger.info("MS-SSIM: %dpx images are too small for the 11-pixel window; using %d.", size, win_size)
    return float(_ms_ssim(a.double(), b.double(), data_range=1.0, win_size=win_size))


class LPIPSScorer:
    """LPIPS distance (the ``lpips`` package) between two images in [0, 1].

    Args:
        net (`str`): ``"alex"`` (default), ``"vgg"`` or ``"squeeze"``.
        model (`torch.nn.Module`, *optional*): an ``lpips.LPIPS`` (or compatible) module to use instead.
        random_backbone (`bool`): build the backbone with random weights instead of torchvision's ImageNet weights
            (which are downloaded); the learned linear heads shipped inside the ``lpips`` package are still loaded.
            For offline tests only: the distances are then not LPIPS.
        device: where to run.
    """

    def __init__(self, net: str = DEFAULT_LPIPS_NET, model: torch.nn.Module | None = None,
                 random_backbone: bool = False, device: str | torch.device | None = None):
        if model is None:
            import lpips

            if net not in ("alex", "vgg", "squeeze"):
                raise ValueError(f"`net` must be 'alex', 'vgg' or 'squeeze', got {net!r}.")
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=random_backbone, verbose=False)
        self.device = torch.device(device or "cpu")
        self.model = model.eval().to(self.device)
        self.net = net

    @torch.no_grad()
    def __call__(self, image: Any, reference: Any, mask: Any | None = None) -> float:
        a, b = _pair(image, reference)
        if mask is not None:
            keep = _keep_mask(mask, a)
            a, b = a * keep, b * keep
        return float(self.model(a.to(self.device), b.to(self.device), normalize=True).reshape(-1)[0])


class _TensorFeatures(torch.nn.Module):
    """A CLIP model whose ``get_image_features`` / ``get_text_features`` return tensors: transformers 5 returns model
    outputs (the projected feature in ``pooler_output``), while torchmetrics' ``clip_score`` expects tensors of a
    "CLIP compatible model" (its documented interface for custom models)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(output: Any) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


class CLIPScorer:
    """CLIP score ``max(100 cos(E_image, E_text), 0)`` with torchmetrics' ``clip_score``.

    Args:
        model_name_or_path (`str`): a Hub id or a local folder of a CLIP model (default: ViT-L/14, the paper's).
        model, processor (*optional*): a loaded ``CLIPModel`` and ``CLIPProcessor`` to use instead.
        device: where to run.
    """

    def __init__(self, model_name_or_path: str = DEFAULT_CLIP_MODEL, model: Any | None = None,
                 processor: Any | None = None, device: str | torch.device | None = None):
        if (model is None) != (processor is None):
            raise ValueError("Pass both `model` and `processor`, or neither.")
        if model is None:
            from transformers import CLIPModel, CLIPProcessor

            model = CLIPModel.from_pretrained(model_name_or_path)
            processor = CLIPProcessor.from_pretrained(model_name_or_path)
        self.device = torch.device(device or "cpu")
        self.model = model.eval().to(self.device)
        self.processor = processor
        self.name = model_name_or_path
        self._compatible = _TensorFeatures(self.model)

    def _loader(self) -> Callable[[], tuple[Any, Any]]:
        return lambda: (self._compatible, self.processor)

    @torch.no_grad()
    def __call__(self, image: Any, prompt: str) -> float:
        from torchmetrics.functional.multimodal import clip_score

        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"`prompt` must be a non-empty string, got {prompt!r}.")
        pixels = (to_tensor(image)[0] * 255).round().to(torch.uint8).to(self.device)
        return float(clip_score(pixels, prompt, model_name_or_path=self._loader()))


class EditScorer:
    """All metrics of one edit: ``clip_score`` (edited image vs target prompt); ``ms_ssim``, ``lpips``, ``psnr``
    (edited vs input, whole image) and the same three on the non-edited region (``*_bg``) when a mask is given."""

    def __init__(self, clip: CLIPScorer, lpips_scorer: LPIPSScorer):
        self.clip = clip
        self.lpips = lpips_scorer

    def __call__(self, edited: Any, source: Any, target_prompt: str, mask: Any | None = None) -> dict[str, float]:
        edited_t, source_t = _pair(edited, source)
        scores = {
            "clip_score": self.clip(edited_t, target_prompt),
            "ms_ssim": ms_ssim(edited_t, source_t),
            "lpips": self.lpips(edited_t, source_t),
            "psnr": psnr(edited_t, source_t),
        }
        nan = float("nan")
        has_region = mask is not None and bool(_keep_mask(mask, source_t).any())
        scores["ms_ssim_bg"] = ms_ssim(edited_t, source_t, mask) if has_region else nan
        scores["lpips_bg"] = self.lpips(edited_t, source_t, mask) if has_region else nan
        scores["psnr_bg"] = psnr(edited_t, source_t, mask) if has_region else nan
        return scores


def mean(values: Sequence[float]) -> float:
    """The mean of the finite-or-infinite values, ignoring ``nan`` (``nan`` if none)."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")
