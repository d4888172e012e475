"""State webhooks: what is sent (payload, signatures), how (the sender), and when
to try again (the retry policy). The dispatcher actor puts them to work."""
