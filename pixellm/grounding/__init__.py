"""Emergent grounding: where a model's answer tokens attend in the image, and how well that
localises the object they name (attend-and-segment, PixFoundation), beside the decoder's masks."""
