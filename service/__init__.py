"""The profile service: FastAPI + micro-batched ONNX Runtime + FAISS + a Redis (or in-process) cache.

Never imports torch. `service.main.create_app(settings)` builds the app; `utpm serve BUNDLE` runs it.
"""
