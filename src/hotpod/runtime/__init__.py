"""The pod runtime: one program, the same under every backend.

``supervisor`` owns the listening socket and keeps a ``worker`` process alive; the worker serves
the HTTP API (``app``), loads the user's code (``loader``) and captures its output (``logs``).
Nothing here imports client-side modules that need a cluster client.
"""
