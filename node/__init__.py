"""TenSafe node: composes broker, trainer worker, gateway and projector into one process."""
