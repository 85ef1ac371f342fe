"""The notifier: calls each project's webhooks, signed and retried, when an update completes or fails.

See docs/notifications.md for the configuration, the payload and how to check a signature.
"""
