"""t2v-bench without installing the console script: `python tools/bench.py [--quick --out r.json]`
or `python tools/bench.py train [--configs tiny demo paper]`."""

import sys

from t2v_jax.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
