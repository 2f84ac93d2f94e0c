"""``s3kit`` command line: a thin layer over the Python API.

Every module in :mod:`s3kit.commands` registers one subcommand; ``s3kit COMMAND --help``
shows its options with their defaults.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from s3kit import __version__


def build_parser() -> argparse.ArgumentParser:
    import s3kit.commands as commands

    parser = argparse.ArgumentParser(
        prog="s3kit",
        description="Distil, prune, pretrain and rewire self-supervised speech encoders, and measure what "
        "that costs and keeps (SUPERB probing, speed and size, SpEAT bias, isotropy).",
    )
    parser.add_argument("--version", action="version", version=f"s3kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"s3kit.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    from s3kit.audio import AudioError
    from s3kit.checkpoint import CheckpointError
    from s3kit.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except (AudioError, CheckpointError, ConfigError, FileNotFoundError) as e:
        # user errors: one clear line, no traceback
        print(f"s3kit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ns3kit {args.command}: interrupted; finished work is kept, run again to resume", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # a torchrun job: leave the process group cleanly
            from s3kit.train.trainer import teardown_distributed

            teardown_distributed()


if __name__ == "__main__":
    sys.exit(main())
