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


def add_bad_audio(parser, default: str | None, what: str = "") -> None:
    """``--on-bad-audio {error,skip}`` and ``--max-bad-share`` (s3kit.data.badaudio); ``default`` None
    means: skip for training data, error for evaluation splits."""
    from s3kit.data.badaudio import MAX_BAD_SHARE, ON_BAD_AUDIO

    shown = "%(default)s" if default else "%(default)s = skip for training data, error for evaluation splits"
    parser.add_argument(
        "--on-bad-audio", choices=ON_BAD_AUDIO, default=default,
        help=f"a cut whose audio is unusable (missing, unreadable, empty, NaN, ...): 'error' stops with the file "
        f"and cut, 'skip' leaves it out, logs it once and lists it in OUT/skipped_audio.jsonl{what} "
        f"(default {shown}; find all such files first with `s3kit data check`)")
    parser.add_argument(
        "--max-bad-share", type=float, default=MAX_BAD_SHARE,
        help="with skip: stop when more than this share of the cuts was unusable (the corpus is broken, not a file)")
