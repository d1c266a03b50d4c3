"""The Gradio app's gradio-free side (``app.py`` lays out the page): a session over one
:class:`cdiff_cli.api.Model`, its analyses, rendering and example inputs."""
