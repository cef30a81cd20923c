"""TenSafe tssp."""
