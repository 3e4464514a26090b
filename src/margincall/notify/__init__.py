"""The notifier: messages from engine events and warnings, the durable outbox, the courier
that delivers them to a webhook, and a local webhook sink for demos and tests."""
