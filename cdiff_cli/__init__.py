"""cdiff: contrastive-guided conditional diffusion for unsupervised anomaly detection in brain MRI."""

__version__ = "0.1.0"
