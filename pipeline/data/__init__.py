"""The data stages, above ``models``: captions, nouns and their CLIP tokens, boxes (Grounding
DINO), masks (SAM), reference masks from COCO annotations, overlays.
"""
