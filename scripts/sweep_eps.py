"""Sweep the epsilon of the epsilon-InfoNCE loss: pretrain one stage-1 encoder per eps on a
recipe, probe each (k-NN identity accuracy, linear probe of the target attribute), plot both
against eps.

What it shows: a larger margin eps pushes positives (a background image and its occluded copy)
harder together, so the encoder should ignore the occluder (the target) more, with a probe
accuracy nearer chance, as long as it still tells identities apart. Needs a prepared
contrastive-analysis store (celeba/attributes layouts). Writes ``OUT/sweep_eps.json`` and
``OUT/sweep_eps.png``; encoders go to ``<runs_dir>/<name>_eps<eps>/encoder``.

    python scripts/sweep_eps.py recipes/celeba.yaml --eps 0,0.25,0.5,1,2 --steps 200 --out runs/sweep_eps
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cdiff_cli.errors import CdiffError


def _plot(path: Path, results: list[dict]) -> None:
    from cdiff_cli.infer.preview import new_figure, save_figure

    eps = [r["eps"] for r in results]
    fig = new_figure((6.0, 3.8))
    ax = fig.subplots()
    knn = [r["probes"]["identity_knn"].get("all", {}).get("accuracy", float("nan")) for r in results]
    probe = [r["probes"]["attribute_probe"].get("balanced_accuracy", float("nan")) for r in results]
    ax.plot(eps, [100 * v for v in knn], "o-", color="#0072B2", label="k-NN identity accuracy (k=3)")
    ax.plot(eps, [100 * v for v in probe], "s-", color="#D55E00", label="target probe, balanced accuracy")
    chance = results[0]["probes"]["identity_knn"].get("chance")
    if chance is not None:
        ax.axhline(100 * chance, color="#0072B2", ls=":", lw=1, label="identity chance")
    ax.axhline(50, color="#D55E00", ls=":", lw=1, label="probe chance (50 %)")
    ax.set_xlabel("epsilon of the epsilon-InfoNCE loss")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("overrides", nargs="*", help="recipe overrides key.path=value")
    ap.add_argument("--eps", default="0,0.25,0.5,1,2", help="comma-separated eps values")
    ap.add_argument("--steps", type=int, default=None,
                    help="encoder steps per eps (short budget; default: the recipe's)")
    ap.add_argument("--max-images", type=int, default=1000, help="probe images per class and split (0: all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="default: <runs_dir>/<name>_sweep_eps")
    args = ap.parse_args(argv)
    try:
        run(args)
    except CdiffError as e:
        print(f"sweep_eps: error: {e}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> list[dict]:
    from cdiff_cli.config import load_recipe
    from cdiff_cli.fileio import write_json
    from cdiff_cli.infer.contrastive import load_encoder
    from cdiff_cli.eval.contrastive_probes import encoder_probes
    from cdiff_cli.data.contrastive_store import CAStore, ca_grid, contrastive_source
    from cdiff_cli.train.distributed import resolve_device
    from cdiff_cli.train.run import train_stage

    try:
        eps_values = [float(v) for v in args.eps.split(",") if v.strip()]
    except ValueError:
        raise CdiffError(f"--eps {args.eps!r}: expected comma-separated numbers") from None
    if not eps_values or any(e < 0 for e in eps_values):
        raise CdiffError("--eps: give one or more values >= 0")
    base = load_recipe(args.recipe, args.overrides)
    source = contrastive_source(base)
    if source is None:
        raise CdiffError(f"{args.recipe} has no celeba/attributes source: the probes need a contrastive-analysis store")
    store = CAStore.open(Path(base.data.prepared) / source.name, expect=ca_grid(base.data, source))
    device = resolve_device(args.device)
    out = args.out or base.runs_dir / f"{base.name}_sweep_eps"
    results = []
    for eps in eps_values:
        extra = [f"encoder.eps={eps}", f"name={base.name}_eps{eps:g}"]
        if args.steps is not None:
            extra.append(f"encoder_train.steps={args.steps}")
        recipe = load_recipe(args.recipe, [*args.overrides, *extra])
        t0 = time.perf_counter()
        train_stage("encoder", recipe, args.device)
        encoder, _ = load_encoder(recipe.run_dir / "encoder", device)
        probes = encoder_probes(encoder, store, device, args.max_images, recipe.seed)
        results.append({"eps": eps, "run": str(recipe.run_dir), "steps": recipe.encoder_train.steps,
                        "seconds": round(time.perf_counter() - t0, 1), "probes": probes})
        knn, ap = probes["identity_knn"], probes["attribute_probe"]
        print(f"eps {eps:g}: k-NN identity {knn.get('all', {}).get('accuracy', float('nan')):.3f}, "
              f"target probe balanced accuracy {ap.get('balanced_accuracy', float('nan')):.3f}", flush=True)
    write_json(out / "sweep_eps.json", {"recipe": str(args.recipe), "eps": eps_values, "results": results})
    _plot(out / "sweep_eps.png", results)
    print(f"wrote {out / 'sweep_eps.json'} and {out / 'sweep_eps.png'}")
    return results


if __name__ == "__main__":
    raise SystemExit(main())
