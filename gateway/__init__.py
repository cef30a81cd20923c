"""TenSafe gateway."""
