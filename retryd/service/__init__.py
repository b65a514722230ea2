"""Running as a service: lifecycle and drain, schedule, HTTP endpoints, systemd, health check."""
