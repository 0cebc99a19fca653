"""The ``fastlr`` command: ``bench`` (the benchmark suite), ``plot`` (schedules to PNG)
and ``demo`` (the classic learning-rate experiments). Each subcommand lives in its own
module, imported only when used, so ``fastlr plot`` never imports torch."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help)
_COMMANDS = {
    "bench": ("fastlr._bench", "benchmark fastlr against torch.optim and NumPy, with the bandwidth roofline"),
    "plot": ("fastlr._plot", "plot learning-rate schedules to a PNG"),
    "demo": ("fastlr._demo", "reproduce the classic learning-rate experiments on a small problem"),
    "info": ("fastlr._info", "print build_info() as JSON"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="fastlr",
        description="fastlr: bench (the benchmark suite), plot (schedules to PNG), demo (the classic "
                    "learning-rate experiments), info (build_info as JSON)",
    )
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(_COMMANDS) + "}")
    sub.required = True
    modules = {}
    for name, (module_name, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if exc.name != module_name:  # a missing dependency of an existing module
                raise
            continue
        module.add_arguments(p)
        modules[name] = module
    args = parser.parse_args(argv)
    if args.command not in modules:
        print(f"fastlr {args.command}: not available in this build", file=sys.stderr)
        return 2
    return int(modules[args.command].main(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
