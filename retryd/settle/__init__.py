"""Where a message ends: deleted after its copy is safe, hidden until due, or parked."""
