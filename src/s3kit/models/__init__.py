"""s3kit's own encoders, one file each (MelHuBERT, KWS student, M2D ViT)."""
