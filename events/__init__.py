"""TenSafe events."""
