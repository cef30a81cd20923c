"""TenSafe projections."""
