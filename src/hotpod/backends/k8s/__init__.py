"""The Kubernetes backend (``HOTPOD_BACKEND=kubernetes``): see :mod:`.backend`.

Imported only when that backend is chosen: it imports the official ``kubernetes`` client.
"""
