"""TenSafe schemas."""
