"""Test factories, importable from the package (like ``lhotse.testing.dummies``)."""

from s3kit.testing.factories import bad_audio_cuts, sine, speechlike, tiny_hf_config, tiny_hf_dir, tiny_hf_model, tone_cuts, write_wav

__all__ = ["bad_audio_cuts", "sine", "speechlike", "tone_cuts", "tiny_hf_config", "tiny_hf_dir", "tiny_hf_model", "write_wav"]
