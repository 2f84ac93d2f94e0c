"""How wide SpEAT's interval of d is, and how often a d of 0.8 is told from 0, by stimulus set size.

Simulated embeddings (``D`` dimensions, isotropic unit-variance noise around a signal along one
"valence" direction ``v``): attributes ``A = +alpha v + noise``, ``B = -alpha v + noise``;
targets ``X = +beta v + noise``, ``Y = -beta v + noise``, with ``beta`` set by bisection so that
the population d (eq. 2, computed on 3 000 stimuli per set) is ``--d`` (0.8 by default,
"large" in the bias paper); ``--d 0`` gives the false-positive rate. Every set has ``n`` stimuli
(``|X| = |Y| = |A| = |B| = n``). For each ``n``, ``--reps`` data sets get
:func:`s3kit.eval.speat.speat` (targets and attributes resampled, the verdict interval) and the
targets-only interval; the table reports the median interval width of each, the share of data
sets whose both-resampled 95 % interval excludes 0, and the share with permutation p < 0.05.

    python benchmarks/speat_widths.py [--sizes 8,16,25,40,60 --reps 200 --d 0.8 --alpha 1.0]
"""

from __future__ import annotations

import argparse

import numpy as np

from s3kit.eval.speat import bootstrap_ci, effect_size, speat


def sets(n: int, beta: float, alpha: float, dim: int, rng) -> tuple[np.ndarray, ...]:
    """X, Y, A, B ``[n, D]`` of the generative model in the module docstring."""
    v = np.eye(dim)[0]
    return tuple(sign * w * v + rng.normal(size=(n, dim))
                 for sign, w in ((1, beta), (-1, beta), (1, alpha), (-1, alpha)))


def calibrate(d: float, alpha: float, dim: int, seed: int = 0, big: int = 3_000) -> float:
    """``beta`` whose population d is ``d`` (bisection on one large draw of the noise)."""
    if d == 0:
        return 0.0
    rng = np.random.default_rng(seed)
    noise = [rng.normal(size=(big, dim)) for _ in range(4)]
    v = np.eye(dim)[0]

    def d_of(beta):
        X, Y = beta * v + noise[0], -beta * v + noise[1]
        A, B = alpha * v + noise[2], -alpha * v + noise[3]
        return effect_size(X, Y, A, B)

    lo, hi = 0.0, 5.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d_of(mid) < d else (lo, mid)
    return (lo + hi) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8,16,25,40,60", help="stimuli per set, comma-separated")
    ap.add_argument("--reps", type=int, default=200, help="simulated data sets per size")
    ap.add_argument("--d", type=float, default=0.8, help="population effect size")
    ap.add_argument("--alpha", type=float, default=1.0, help="valence signal of the attribute clips (noise sd = 1)")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--n-permutations", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    beta = calibrate(args.d, args.alpha, args.dim, args.seed)
    print(f"population d={args.d} (beta={beta:.3f}, alpha={args.alpha}, D={args.dim}), {args.reps} data sets per size")
    print("| stimuli per set | median width, both resampled | median width, targets only | "
          "interval excludes 0 | permutation p < 0.05 |")
    print("|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(args.seed + 1)
    for n in (int(s) for s in args.sizes.split(",")):
        w_both, w_t, excl, sig = [], [], 0, 0
        for r in range(args.reps):
            X, Y, A, B = sets(n, beta, args.alpha, args.dim, rng)
            res = speat(X, Y, A, B, n_permutations=args.n_permutations, n_bootstrap=args.n_bootstrap, seed=r)
            lo, hi = bootstrap_ci(X, Y, A, B, n_bootstrap=args.n_bootstrap, seed=r, resample="targets")
            w_both.append(res.ci_high - res.ci_low)
            w_t.append(hi - lo)
            excl += res.ci_low > 0 or res.ci_high < 0
            sig += res.p_value < 0.05
        # the share of data sets is a proportion of reps: give its Wilson interval too
        from s3kit.eval.stats import wilson_ci

        def share(k):
            lo_, hi_ = wilson_ci(k, args.reps)
            return f"{k / args.reps:.2f} [{lo_:.2f}, {hi_:.2f}]"

        print(f"| {n} | {np.median(w_both):.2f} | {np.median(w_t):.2f} | {share(excl)} | {share(sig)} |")


if __name__ == "__main__":
    main()
