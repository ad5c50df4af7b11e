"""`python -m bench.sampling`: the command; the harness is bench/harnesses/sampling.py."""

import sys

from bench.harnesses.sampling import main

if __name__ == "__main__":
    main(sys.argv[1:])
