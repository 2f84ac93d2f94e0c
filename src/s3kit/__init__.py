"""s3kit: distil, prune, pretrain and rewire self-supervised speech encoders, and measure
what that costs and keeps (SUPERB-style probing, speed and size, SpEAT bias, isotropy)."""

from s3kit.audio import SAMPLE_RATE, AudioError

__version__ = "0.1.0"
__all__ = ["SAMPLE_RATE", "AudioError", "Hidden", "Upstream", "load_upstream", "__version__"]


def __getattr__(name):  # lazy: `import s3kit` stays cheap; torch and transformers load on use
    if name in ("Hidden", "Upstream", "load_upstream"):
        from s3kit import upstream

        return getattr(upstream, name)
    raise AttributeError(f"module 's3kit' has no attribute {name!r}")
