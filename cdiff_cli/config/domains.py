"""What kind of images a recipe works on (its *domain*): the one table the layers read, as
``models/methods.py`` is for methods.

A domain groups the source layouts that are read, prepared, trained on, fed to a model and
evaluated alike. This record only names them; each layer keeps its own part in a table keyed
by the domain's name, next to the functions it points to, so no layer imports upwards:

========= ============================== ==============================================
layer     table                          what it holds per domain
========= ============================== ==============================================
``data``  ``prepare.PREPARERS``          how ``cdiff prepare`` stores a source
``data``  ``dataset.TRAINING_DATA``      the Dataset both training stages read
``api``   ``files.FILE_STAGES``          how ``cdiff reconstruct`` reads and writes files
``app``   ``analysis.IMAGE_ANALYSES``    how the app analyses an uploaded 2-D image
``app``   ``examples.EXAMPLES``          the example inputs the app offers
``eval``  ``protocol.PROTOCOLS``         the protocol of ``cdiff evaluate``
========= ============================== ==============================================

The recipe's domain is chosen once, by ``config.domain_of`` (that of the source the models
train on); 2-D image folders never train, so only the first table has a row for them.
Brain MRI inputs (a PNG slice or a NIfTI volume) are read by ``infer/maps.read_input``
whatever the layouts, photographs by ``infer/contrastive.py``.

>>> layout_domain("nova").name, layout_domain("celeba").name, layout_domain("ixi").name
('images', 'contrastive', 'volumes')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Layout = Literal["ixi", "brats", "mslub", "behrendt", "nova", "manifest", "bids", "folder", "celeba", "attributes"]
DomainName = Literal["volumes", "images", "contrastive"]


@dataclass(frozen=True)
class Domain:
    name: DomainName
    title: str  # one line for messages and docs
    layouts: tuple[Layout, ...]  # the source layouts of this domain (each layout is in exactly one)
    trains: bool  # a healthy source of it is what the models learn from (2-D image folders are only scored)
    colour: bool  # inputs are photographs (RGB or gray, centred crop, 8-bit scale), not MRI intensities


DOMAINS: dict[DomainName, Domain] = {d.name: d for d in (
    Domain("volumes", "3-D brain volumes (NIfTI)", ("ixi", "brats", "mslub", "behrendt", "manifest", "bids"),
           trains=True, colour=False),
    Domain("images", "2-D image folders (PNG/JPG slices, NOVA)", ("nova", "folder"), trains=False, colour=False),
    Domain("contrastive", "contrastive image sets (background and target images, CelebA-style)",
           ("celeba", "attributes"), trains=True, colour=True),
)}
IMAGE_LAYOUTS = DOMAINS["images"].layouts  # 2-D slices, one store per folder; never trained on
CA_LAYOUTS = DOMAINS["contrastive"].layouts  # 2-D contrastive analysis: background and target images in one source
assert sorted(sum((d.layouts for d in DOMAINS.values()), ())) == sorted(get_args(Layout)), "a layout without domain"


def layout_domain(layout: Layout) -> Domain:
    """The domain whose sources have ``layout``."""
    return next(d for d in DOMAINS.values() if layout in d.layouts)
