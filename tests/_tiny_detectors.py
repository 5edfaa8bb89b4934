"""Tiny randomly initialised GroundingDINO and SAM models (and stubs) for the offline tests of ``oir.masks``."""

from __future__ import annotations

import os
from functools import partial
from types import SimpleNamespace

import torch

# GroundingDINO splits its caption at BERT's [CLS]=101, [SEP]=102, "."=1012 and "?"=1029 (hard-coded token ids),
# so the tiny vocabulary keeps those ids.
_WORDS = (
    "a an the of on in with and photo cat dog bird tiger blanket plate bowl table red green small big "
    "dumplings chopsticks fried rice car tree sky person"
).split()


def bert_vocab() -> list[str]:
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + _WORDS
    vocab += [f"[unused{i}]" for i in range(99, 99 + 1012 - len(vocab))]
    vocab += ["."] + [f"[unused_{i}]" for i in range(16)] + ["?", ",", "-"]
    assert vocab.index(".") == 1012 and vocab.index("?") == 1029
    return vocab


def bert_tokenizer(folder: str):
    """A fast uncased BERT WordPiece tokenizer over :func:`bert_vocab`, written to ``folder``."""
    from transformers import BertTokenizerFast

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(bert_vocab()) + "\n")
    return BertTokenizerFast(path, do_lower_case=True)


def tiny_grounding_dino(folder: str, seed: int = 0, num_queries: int = 10, max_text_len: int = 32):
    """A tiny GroundingDINO (Swin backbone, 1-layer BERT) and its processor (64..96 px images)."""
    from transformers import (
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    torch.manual_seed(seed)
    tokenizer = bert_tokenizer(folder)
    config = GroundingDinoConfig(
        d_model=32,  # GroupNorm(32, d_model) inside
        encoder_layers=1,
        decoder_layers=2,  # the box heads of decoder layers >= 1 are tied to layer 0's
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        num_queries=num_queries,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=max_text_len,
        backbone_config=SwinConfig(
            window_size=7, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], image_size=64,
            out_indices=[2, 3, 4],
        ),
        text_config=dict(
            model_type="bert", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
            max_position_embeddings=max_text_len, vocab_size=len(bert_vocab()),
        ),
    )
    model = GroundingDinoForObjectDetection(config).eval()
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    return model, GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_segment_anything(seed: int = 0):
    """A tiny ``segment_anything`` ``Sam`` (64 px input, 8x8 embedding) built from the package's modules."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=64, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, out_chans=16,
            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=16, image_embedding_size=(8, 8), input_image_size=(64, 64), mask_in_chans=4
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=16, mlp_dim=32, num_heads=2),
            transformer_dim=16,
            iou_head_depth=3,
            iou_head_hidden_dim=16,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def tiny_transformers_sam(seed: int = 0):
    """A tiny transformers ``SamModel`` (64 px input) and its ``SamProcessor``."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(seed)
    config = SamConfig(
        vision_config=dict(
            hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=64,
            patch_size=8, window_size=4, global_attn_indexes=[1], mlp_dim=32, num_pos_feats=8,
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16),
    )
    processor = SamProcessor(SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}))
    return SamModel(config).eval(), processor


class StubDetector(torch.nn.Module):
    """A GroundingDINO stand-in with known boxes.

    ``detections`` is a list of ``(word, probability, (cx, cy, w, h))``: one query per entry, whose probability is
    ``probability`` on every token of ``word`` in the caption (and ``background`` elsewhere), with that relative
    box. Records the captions it was called with.
    """

    def __init__(self, tokenizer, detections, background: float = 0.05, max_text_len: int = 32):
        super().__init__()
        self.tokenizer = tokenizer
        self.detections = detections
        self.background = background
        self.config = SimpleNamespace(max_text_len=max_text_len)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the stub a device and a dtype
        self.captions = []

    def forward(self, input_ids, pixel_values, **kwargs):
        ids = input_ids[0]
        self.captions.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        logit = lambda p: torch.logit(torch.tensor(p))  # noqa: E731
        logits = torch.full((1, len(self.detections), self.config.max_text_len), float("-inf"))
        logits[..., : ids.shape[0]] = logit(self.background)
        boxes = torch.zeros(1, len(self.detections), 4)
        for query, (word, probability, box) in enumerate(self.detections):
            word_ids = torch.tensor(self.tokenizer(word, add_special_tokens=False)["input_ids"])
            logits[0, query, : ids.shape[0]][torch.isin(ids, word_ids)] = logit(probability)
            boxes[0, query] = torch.tensor(box)
        return SimpleNamespace(logits=logits, pred_boxes=boxes)


def fill_boxes(image, boxes: torch.Tensor) -> torch.Tensor:
    """A SAM stand-in: each mask is exactly its (rounded) box."""
    masks = torch.zeros(len(boxes), image.height, image.width, dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.round().long().tolist()):
        mask[y0:y1, x0:x1] = True
    return masks
