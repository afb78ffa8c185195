"""E-mail notifications: an outbox consumer. Each topic module in `topics/` registers, per event
type, a renderer that turns the event into e-mails (`email_renderer_register`)."""
