"""The online half: serves model bundles over HTTP with FastAPI and onnxruntime (no torch).

Run it with `python -m service` (HOST, PORT, MODEL_DIR, BOOTSTRAP_BUNDLE, REDIS_URL,
ADMIN_TOKEN from the environment; see `service.settings.Settings`).
"""
