"""The brain-mask network in channels-last (NHWC) memory format, as ``infer/brain.brain_net`` now loads it,
against the contiguous (NCHW) format it had: the masks, the skull detector's decisions and the network's
milliseconds per image (batches of 8, 1 and 2 threads), on NOVA-like slices of the held-out and training
anatomies and on the demo's skull-stripped slices (x1, x3 enlarged). From the repository root after
`make demo`:

    .venv/bin/python benchmarks/results/infer/brainnet_nhwc.py
"""
import copy, time
from pathlib import Path

import numpy as np
import torch

from cdiff_cli.data.images2d import letterbox_meta, to_model_grid
from cdiff_cli.eval.brain_mask import prepared_slices
from cdiff_cli.infer import brain
from cdiff_cli.models.brainmask import GRID, load_brain_net, normalise
from cdiff_cli.synthetic import sources
from cdiff_cli.synthetic.brainmask import HELD_OUT, nova_like_slices

torch.set_num_threads(1)
nchw = load_brain_net(brain.WEIGHTS)[0].eval()
nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)


def probs(net, imgs, channels_last):
    metas = [letterbox_meta(np.shape(i), (GRID, GRID)) for i in imgs]
    x = torch.from_numpy(np.stack([to_model_grid(normalise(np.asarray(i, np.float32)), m)
                                   for i, m in zip(imgs, metas)]))[:, None]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return list(torch.sigmoid(net(x))[:, 0].numpy()), metas


have = [a.id for a in sources.available()[0]]
unseen = [a for a in HELD_OUT if a in have]
seen = [a for a in have if a not in HELD_OUT]
sets = {"NOVA-like unseen": nova_like_slices(unseen, 30), "NOVA-like seen": nova_like_slices(seen, 10)}
for st in ["demo/prepared/reference/ixi", "demo/prepared/reference/brats", "demo/prepared/reference/mslub"]:
    if Path(st).exists():
        for k in (1, 3):
            sets[f"{st} x{k}"] = prepared_slices(Path(st), enlarge=k)
for name, items in sets.items():
    imgs = [it[0] for it in items]
    n_pix = n_diff = skull_diff = 0
    dmax = 0.0
    for s in range(0, len(imgs), 8):
        chunk = imgs[s:s + 8]
        pa, metas = probs(nchw, chunk, False)
        pb, _ = probs(nhwc, chunk, True)
        for img, a, b, m in zip(chunk, pa, pb, metas):
            dmax = max(dmax, float(np.abs(a - b).max()))
            ma, mb = brain.mask_from_probability(a, m), brain.mask_from_probability(b, m)
            n_pix += ma.size
            n_diff += int((ma != mb).sum())
            skull_diff += brain.has_skull(img, a, m) != brain.has_skull(img, b, m)
    print(f"{name:40s} n={len(imgs):3d} max |p diff| {dmax:.1e} mask pixels differing {n_diff} of {n_pix} "
          f"skull decisions differing {skull_diff}", flush=True)

x = torch.rand(8, 1, GRID, GRID)
xc = x.contiguous(memory_format=torch.channels_last)
for threads in (2, 1):
    torch.set_num_threads(threads)
    out = []
    for net, inp in ((nchw, x), (nhwc, xc)):
        with torch.no_grad():
            net(inp)
            best = min((lambda t0: (net(inp), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(10))
        out.append(best / 8 * 1e3)
    print(f"{threads} thread(s): NCHW {out[0]:.1f} ms/image, NHWC {out[1]:.1f} ms/image, ratio {out[0] / out[1]:.2f}x")
