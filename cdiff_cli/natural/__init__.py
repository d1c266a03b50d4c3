"""Contrastive analysis on natural 2-D images (CelebA-style: a target attribute such as
eyeglasses against a background of faces without it), the whole feature in one package.

Each module keeps the layer of what it does (see ``tests/test_layering.py``), so imports
still only point down even though the feature lives together:

============== ======= ==================================================================
module         layer   what
============== ======= ==================================================================
``attributes`` data    attribute tables (CelebA ``list_attr_celeba.txt``, CSV), roles, splits
``grid``       data    natural images onto the model grid (centred crop, resize) and back
``store``      data    the prepared contrastive-analysis store (``cdiff prepare``)
``synthetic``  data    the CelebA-like fixture generator (``cdiff synthesize celeba``)
``infer``      infer   reconstruction and maps of one natural image, the encoder's embedding
``metrics``    eval    pure metrics: SSIM, MSE, k-NN and balanced accuracy
``probes``     eval    attribute probes on encoder embeddings
``report``     eval    the contrastive report's table and figures
``evaluate``   eval    ``cdiff evaluate`` for a contrastive-analysis recipe
============== ======= ==================================================================
"""
