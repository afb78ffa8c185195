"""Domain events: a transactional outbox.

A service records what happened with `services.event_record(...)` in the same transaction as the
change; consumers registered with `consumers.consumer_register(...)` act on it after commit.
"""
