"""Argument helpers shared by the subcommands (not a command: ``s3kit.cli`` skips ``_`` modules)."""

from __future__ import annotations

import argparse


class IntermixedParser(argparse.ArgumentParser):
    """Lets ``key=value`` overrides follow the options (``KIND --out D lr=1e-4``): plain argparse
    takes all positionals at their first run and rejects later ones. Install on a subparser with
    ``parser.__class__ = IntermixedParser``."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_intermixing", False):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def add_bad_audio(parser, default: str | None = "error") -> None:
    """``--on-bad-audio {error,skip}`` and ``--max-bad-share`` (:mod:`s3kit.data.badaudio`) for a
    command that reads evaluation data (``default`` error) or data of both kinds (None)."""
    from s3kit.data.badaudio import MAX_BAD_SHARE, ON_BAD_AUDIO

    shown = "%(default)s" if default else "%(default)s = skip for training data, error for evaluation splits"
    parser.add_argument(
        "--on-bad-audio", choices=ON_BAD_AUDIO, default=default,
        help="a cut whose audio is unusable (missing, unreadable, empty, NaN, stale manifest): 'error' stops with "
        "the file and cut, 'skip' leaves it out, logs it once and lists it in OUT/skipped_audio.jsonl "
        f"(default {shown}; find every such file first with `s3kit data check`)")
    parser.add_argument(
        "--max-bad-share", type=float, default=MAX_BAD_SHARE,
        help="with skip: stop when more than this share of the cuts was unusable (the corpus is broken, not a file)")


def add_train_bad_audio(parser, key: str = "train.on_bad_audio") -> None:
    """The same options for a training command: they set ``train.on_bad_audio`` / ``train.max_bad_share``
    (TrainConfig; ``key`` names the config field) for the training data; validation data must stay
    complete and always stops."""
    parser.add_argument(
        "--on-bad-audio", choices=("error", "skip"), default=argparse.SUPPRESS,
        help="training data: a cut whose audio is unusable (missing, unreadable, empty, NaN, stale manifest) is "
        "left out, logged once, counted (skipped_audio in metrics.csv) and listed in OUT/skipped_audio.jsonl "
        f"('skip'), or stops the run ('error'). Default: {key} of the recipe, else skip. A bad file in "
        "the validation or evaluation data always stops. Find every such file first with `s3kit data check`")
    parser.add_argument(
        "--max-bad-share", type=float, default=argparse.SUPPRESS,
        help="with skip: stop when more than this share of the training cuts was unusable (default: "
        f"{key.replace('on_bad_audio', 'max_bad_share')}, 0.01)")


def train_bad_audio_overrides(args) -> list[str]:
    """``key=value`` TrainConfig overrides from :func:`add_train_bad_audio`'s options (none when unset)."""
    out = []
    if getattr(args, "on_bad_audio", None) is not None:
        out.append(f"on_bad_audio={args.on_bad_audio}")
    if getattr(args, "max_bad_share", None) is not None:
        out.append(f"max_bad_share={args.max_bad_share}")
    return out
