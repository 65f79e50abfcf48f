"""What an operator and a lab's Prometheus see of the whole system: one snapshot read from the ledger and the
worker registry (:mod:`.snapshot`), written as Prometheus metrics (:mod:`.exposition`) or drawn on a terminal
(:mod:`.view`, ``han-worker top``)."""
