"""The web side: the scheduler proxy, transactional enqueue, declared jobs."""
