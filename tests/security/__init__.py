"""The adversarial suite: messages, broker entries and job-store rows an
attacker could write, against the real daemon and its parts."""
