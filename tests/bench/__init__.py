"""``make bench`` (``python -m tests.bench``): figures next to baselines measured in the same run.

See ``__main__`` for what is measured and how; ``data`` builds the bench's own database,
``processes`` runs the servers (the real one and a bare grpc.aio baseline) as subprocesses.
"""
