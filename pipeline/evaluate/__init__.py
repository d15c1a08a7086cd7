"""The evaluation stages, the top library layer: generation, detection, MultiGen, Object
Accuracy, FID, attention grounding on held-out images, prompt files.
"""
