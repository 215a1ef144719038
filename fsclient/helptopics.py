"""``fsclient help TOPIC``: longer help than ``--help`` has room for, shipped with the package
(``fsclient/topics/TOPIC.txt``)."""

from __future__ import annotations

import argparse

TOPICS = ("config", "shares", "sync", "exit-codes", "completion")


def add_command(command: object) -> None:
    sub = command("help", "longer help on a topic: " + ", ".join(TOPICS))  # type: ignore[operator]
    sub.add_argument("topic", nargs="?", choices=TOPICS, metavar="TOPIC",
                     help=f"one of: {', '.join(TOPICS)}")  # fmt: skip


def show(args: argparse.Namespace) -> int:
    from importlib import resources

    if args.topic is None:
        print("fsclient help TOPIC, where TOPIC is one of:")
        for topic in TOPICS:
            print(f"  {topic}")
        return 0
    print(resources.files("fsclient").joinpath("topics", f"{args.topic}.txt").read_text(), end="")
    return 0
