"""The domain: task-run creation, reads and state bookkeeping. No HTTP here."""
