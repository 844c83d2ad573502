"""Real services (an S3 server) that tests start and stop themselves."""
