"""The control-plane supervisor: PostgreSQL, Redis and an S3 server as children of one process.

``han-control-plane run`` starts them, waits until each answers an authenticated probe, publishes the
endpoints and credentials files, and on SIGTERM marks the endpoints stale and stops them cleanly. It
restarts a service that crashes, and starts over what a killed predecessor left once that one is provably
gone (ownership, leftovers, incidents).
"""
