"""`python -m bench.loss`: the command; the harness is bench/harnesses/loss.py."""

import sys

from bench.harnesses.loss import main

if __name__ == "__main__":
    main(sys.argv[1:])
