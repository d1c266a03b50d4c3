"""Encoder probes for contrastive analysis: does z keep the identity and drop the target?

- k-NN identity accuracy (k = 3, cosine on z): the gallery is the background TRAIN images of
  the identities being queried, the queries are the TEST images (background and target,
  reported separately). When the splits share no identity (the real CelebA partitions are
  identity-disjoint), it falls back to leave-one-out within the test images; the protocol
  used is reported. High is good: z knows who it is.
- Linear probe of the target attribute (logistic regression on standardised z, trained on the
  train split, tested on the test split): a GOOD target-invariant encoder is near chance,
  reported both as the majority-class accuracy and as balanced accuracy (chance 0.5).

Reusable: :func:`encoder_probes` takes any encoder and a prepared store (``evaluate`` probes the
model's conditioning encoder, ``scripts/sweep_eps.py`` the stage-1 encoders).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cdiff_cli.eval import contrastive_metrics as C
from cdiff_cli.infer.contrastive import embed
from cdiff_cli.data.contrastive_store import CAStore

K = 3


def subsample(rows: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """At most ``cap`` of ``rows`` (0 = all), a seeded choice kept in order."""
    rows = np.asarray(rows)
    if cap <= 0 or len(rows) <= cap:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=cap, replace=False))


def identity_knn(store: CAStore, z_of: Any, query: np.ndarray, k: int = K) -> dict[str, Any]:
    """k-NN identity accuracy of the ``query`` rows (test images); ``z_of(rows) -> (n, D)``."""
    if not store.has_identity:
        return {"available": False, "reason": "the dataset has no identities (identity_CelebA.txt / identity_column)"}
    ids = store.identity
    gallery = store.select("train", "background")
    gallery = gallery[np.isin(ids[gallery], np.unique(ids[query]))]
    protocol = "train -> test"
    if len(gallery) >= k:
        zq, zg = z_of(query), z_of(gallery)
        pred = C.knn_predict(zg, ids[gallery], zq, k=k)
        covered = np.isin(ids[query], ids[gallery])
    else:  # identity-disjoint splits: leave-one-out among the test images
        protocol = "leave-one-out within test (the splits share no identity)"
        counts = {i: n for i, n in zip(*np.unique(ids[query], return_counts=True))}
        covered = np.array([counts[i] > 1 for i in ids[query]])
        if covered.sum() < 2:
            return {"available": False, "reason": "no identity has two test images"}
        zq = z_of(query)
        pred = C.knn_predict(zq, ids[query], zq, k=k, leave_one_out=True)
    out: dict[str, Any] = {"available": True, "k": k, "protocol": protocol, "metric": "cosine on z"}
    for role in ("background", "target", None):
        m = covered & ((store.role[query] == role) if role else True)
        key = role or "all"
        out[key] = {"accuracy": C.accuracy(ids[query][m], pred[m]), "n": int(m.sum())}
    top = np.unique(ids[query][covered], return_counts=True)[1]
    out["chance"] = float(top.max() / top.sum()) if top.size else float("nan")
    out["identities"] = int(len(np.unique(ids[query][covered])))
    return out


def attribute_probe(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray,
                    seed: int = 0) -> dict[str, Any]:
    """Logistic regression of a binary attribute from z: accuracy, balanced accuracy and chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2 or len(np.unique(y_test)) < 2:
        return {"available": False, "reason": "the train or test split lacks one of the two classes"}
    scaler = StandardScaler().fit(z_train)
    clf = LogisticRegression(max_iter=2000, random_state=seed).fit(scaler.transform(z_train), y_train)
    pred = clf.predict(scaler.transform(z_test))
    return {"available": True, "accuracy": C.accuracy(y_test, pred), "chance": C.majority_chance(y_train, y_test),
            "balanced_accuracy": C.balanced_accuracy(y_test, pred), "balanced_chance": 0.5,
            "n_train": int(len(y_train)), "n_test": int(len(y_test))}


def encoder_probes(encoder: torch.nn.Module, store: CAStore, device: torch.device, max_images: int = 0,
                   seed: int = 0, batch_size: int = 128) -> dict[str, Any]:
    """Both probes of one encoder on a prepared store; at most ``max_images`` per class and split."""
    cache: dict[int, np.ndarray] = {}

    def z_of(rows: np.ndarray) -> np.ndarray:
        todo = np.array([r for r in np.unique(rows) if int(r) not in cache], dtype=np.int64)
        for start in range(0, len(todo), 1024):  # bounded memory on the real dataset
            part = todo[start : start + 1024]
            for r, z in zip(part, embed(encoder, store.images(part), device, batch_size)):
                cache[int(r)] = z
        return np.stack([cache[int(r)] for r in rows])

    def rows(split: str) -> np.ndarray:
        return np.concatenate([subsample(store.select(split, role), max_images, seed + i)
                               for i, role in enumerate(("background", "target"))])

    test, train = rows("test"), rows("train")
    result: dict[str, Any] = {"identity_knn": identity_knn(store, z_of, test)}
    target = store.doc["config"]["target"]
    if not len(test) or not len(train):
        result["attribute_probe"] = {"available": False, "reason": "empty train or test split"}
    else:
        y_tr, y_te = store.role[train] == "target", store.role[test] == "target"
        result["attribute_probe"] = {"attribute": target, **attribute_probe(z_of(train), y_tr, z_of(test), y_te,
                                                                            seed)}
    return result
