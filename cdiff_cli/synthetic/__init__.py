"""The embedded synthetic brain-MRI benchmark (``cdiff synthesize``): anatomy, lesions, NOVA-like images."""
