"""TenSafe trainer."""
