"""The daemon: service, intake, scheduling of due jobs, execution, recovery, catch-up, retries."""
