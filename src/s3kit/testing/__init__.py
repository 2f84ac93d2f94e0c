"""Test factories, importable from the package (like ``lhotse.testing.dummies``)."""

from s3kit.testing.factories import sine, tiny_hf_config, tiny_hf_dir, tiny_hf_model, tone_cuts, write_wav

__all__ = ["sine", "tone_cuts", "tiny_hf_config", "tiny_hf_dir", "tiny_hf_model", "write_wav"]
