"""``fastlr info``: the build_info() dict as JSON."""
import json

from . import build_info


def add_arguments(parser):
    pass


def main(args):
    print(json.dumps(build_info(), indent=2))
    return 0
