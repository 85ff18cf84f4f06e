"""attend-and-segment's last step: a segmentation model prompted with the attention peak.

transformers' `SamModel` (weights are the user's, e.g. facebook/sam-vit-huge saved locally) is
prompted with the single point; of its three candidate masks the one with the highest predicted
IoU is kept (SAM's own choice for an ambiguous single point).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


class SamPointSegmenter:
    """(image, point) -> (H, W) bool mask at the image's size."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        from transformers import SamModel, SamProcessor

        self.device = torch.device(device)
        self.model = SamModel.from_pretrained(path).to(self.device).eval()
        self.processor = SamProcessor.from_pretrained(path)

    @torch.no_grad()
    def __call__(self, image: Image.Image, point: tuple[float, float]) -> np.ndarray:
        inputs = self.processor(images=image, input_points=[[[list(point)]]], return_tensors="pt").to(self.device)
        out = self.model(**inputs, multimask_output=True)
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu())[0]
        best = int(out.iou_scores[0, 0].argmax())  # (batch, point batch, 3) -> SAM's most confident mask
        return masks[0, best].numpy().astype(bool)
