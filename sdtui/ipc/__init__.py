"""The process wall: the engine daemon, its clients and the messages between them.

Nothing here imports torch or textual: the daemon is a small supervisor that keeps the job
queue and starts one engine worker (``sdtui.engine.worker``) per device.
"""
