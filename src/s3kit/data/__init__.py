"""Data: lhotse manifests (CutSets) plus the recipes lhotse lacks and the synthetic corpus."""

from s3kit.data.manifest import get_label, load_cuts, save_cuts

__all__ = ["get_label", "load_cuts", "save_cuts"]
