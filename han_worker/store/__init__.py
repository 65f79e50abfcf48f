"""Where jobs live: the ledger (PostgreSQL), the queues (Redis), artifacts (S3), the local spool."""
