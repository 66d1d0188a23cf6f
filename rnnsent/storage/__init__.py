"""Files on disk: atomic writes (files.py), the checksummed envelope (envelope.py) and the checkpoint format
(checkpoint.py). Nothing here knows about models or training."""
