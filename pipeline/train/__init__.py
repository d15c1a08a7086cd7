"""The ``train`` stage, above ``data``: attention capture, the TokenCompose losses, the dataset,
the training loop, checkpoints, dvclive logging and attention heatmaps.
"""
