"""The worker: its loop, one attempt of a job, and the reconciler."""
