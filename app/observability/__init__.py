"""What operators see of the running service: request ids, log lines and metrics."""
