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
