"""The web UI (``dreamengine ui``): a Gradio page over the library API, each run in its own worker process.

Needs the optional extra ``ui`` (``pip install 'dreamengine[ui]'``); nothing here is imported by the engine.
"""
