"""Triggers: the schedule forms of add_*_job, building, previews."""
