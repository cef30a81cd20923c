"""TenSafe crypto."""
