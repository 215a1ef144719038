import sys

from fsclient.cli import main

if __name__ == "__main__":
    sys.exit(main())
