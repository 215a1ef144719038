# PYTHON_ARGCOMPLETE_OK  (fsclient answers shell completion: fsclient.completion)
"""The ``fsclient`` command (console script and ``python -m fsclient``) starts here.

Ctrl-C while Python loads the program must end it quietly, with no KeyboardInterrupt traceback:
the first statement below gives SIGINT its default action back (the process ends at once; the
shell sees exit status 130), and ``fsclient.cli.main`` takes Ctrl-C over once it runs a command.
Keep this module and the package's ``__init__`` free of imports: they run before that statement.
"""

import _signal  # built in and already loaded; ``import signal`` would load more modules first

if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:  # not if ignored (nohup)
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)


def main() -> int:
    import os

    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (Tab)
        from fsclient.completion import complete

        complete()
    from fsclient.cli import main as run_command

    return run_command()


if __name__ == "__main__":
    import sys

    sys.exit(main())
