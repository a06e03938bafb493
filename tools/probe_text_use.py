"""Which prompt words does a pipeline's base stage use? (t2v_jax.eval.text_probe)

  python tools/probe_text_use.py --pipeline shapes
  python tools/probe_text_use.py --pipeline /tmp/my_pipeline --num-clips 128 --json probe.json

Prints, per noise level, the base stage's v-MSE on rendered `shapes` clips with the true caption
and how much worse it gets with the null text or a wrong colour / shape / motion word.
"""

from __future__ import annotations

import argparse
import json
import pathlib


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pipeline", default="shapes", help="built-in name or a saved pipeline folder")
    p.add_argument("--num-clips", type=int, default=64)
    p.add_argument("--noise-levels", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 0.95])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-config", default="sweep32x16",
                   help="the shapes config the stage trained on (object sizes and travel)")  # fmt: skip
    p.add_argument("--json", type=pathlib.Path, default=None, help="write the result here")
    args = p.parse_args(argv)

    import t2v_jax
    from t2v_jax.eval import text_probe

    result = text_probe.text_use_probe(
        t2v_jax.load_pipeline(args.pipeline),
        num_clips=args.num_clips,
        noise_levels=args.noise_levels,
        seed=args.seed,
        data_config_name=args.data_config,
    )
    print(text_probe.format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
