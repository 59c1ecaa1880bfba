"""The Gradio app (the Hugging Face Space); ``app.py`` at the top of the repository starts it.

- :mod:`gfp.app.settings`: flags and environment variables, the models offered, the startup weight check.
- :mod:`gfp.app.handlers`: the photo and video requests (API endpoints and MCP tools) and what they share.
- :mod:`gfp.app.ui`: the Blocks UI and serving it.

gradio is imported here only: nothing else in ``gfp`` needs it.
"""
