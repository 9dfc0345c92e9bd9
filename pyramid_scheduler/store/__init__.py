"""The store: the ledger of jobs and runs, run batches, job stores, the lease, the schema."""
