"""The brain mask cleaned on the network's grid (``infer/brain.mask_from_probability``, now) against
cleaning after resizing to the image's pixels (before): Dice against the exact brain, pixels that
differ, and milliseconds per slice, on NOVA-like slices of the held-out and training anatomies and on
the demo's skull-stripped slices (x1, x3 enlarged). Run from the repository root after `make demo`:

    .venv/bin/python benchmarks/results/infer/mask_on_grid.py
"""
import numpy as np, time, sys
from scipy import ndimage
import torch; torch.set_num_threads(1)
from cdiff_cli.infer import brain
from cdiff_cli.data.images2d import from_model_grid
from cdiff_cli.synthetic import sources
from cdiff_cli.synthetic.brainmask import HELD_OUT, nova_like_slices
from cdiff_cli.eval.brain_mask import prepared_slices
from pathlib import Path

def cleaned_after_resize(prob, meta):
    """The former order: resize the probabilities to the image's pixels, > 0.5, then clean there."""
    return brain._clean(from_model_grid(prob, meta) > 0.5)

def dice(a,b):
    s=a.sum()+b.sum(); return 1.0 if s==0 else 2*(a&b).sum()/s
have=[a.id for a in sources.available()[0]]
unseen=[a for a in HELD_OUT if a in have]; seen=[a for a in have if a not in HELD_OUT]
sets={"unseen":nova_like_slices(unseen,30),"seen":nova_like_slices(seen,10)}
for st in ["demo/prepared/reference/ixi","demo/prepared/reference/brats","demo/prepared/reference/mslub"]:
    if Path(st).exists():
        for k in (1,3): sets[f"{st} x{k}"]=prepared_slices(Path(st),enlarge=k)
for name,items in sets.items():
    do,dn,diff,to,tn=[],[],[],0,0
    for img,truth,an in items:
        prob,meta=brain.brain_probability(img)
        t=time.perf_counter(); a=cleaned_after_resize(prob,meta); to+=time.perf_counter()-t
        t=time.perf_counter(); b=brain.mask_from_probability(prob,meta); tn+=time.perf_counter()-t
        do.append(dice(a,truth)); dn.append(dice(b,truth)); diff.append((a!=b).mean())
    do,dn=np.array(do),np.array(dn)
    print(f"{name:40s} n={len(items):3d} dice old {do.mean():.4f} new {dn.mean():.4f} min {do.min():.4f}/{dn.min():.4f} paired diff {np.mean(dn-do):+.5f} [{np.percentile(dn-do,2.5):+.4f},{np.percentile(dn-do,97.5):+.4f}] pix disagree {np.mean(diff)*100:.3f}% max {np.max(diff)*100:.2f}% ms {to/len(items)*1000:.2f}->{tn/len(items)*1000:.2f}",flush=True)
