"""One cycle over every DLQ, and one received batch from receive to delete."""
