"""`python -m bench.profile`: the command; the harness is bench/harnesses/profile.py."""

import sys

from bench.harnesses.profile import main

if __name__ == "__main__":
    main(sys.argv[1:])
