"""TenSafe gateway: authenticates and validates requests, publishes commands to
tensafe.commands, answers futures and reads from its own read model of the ledger.

Public surface::

    from tensafe.gateway import create_app, Settings, ModelSpec
    from tensafe.gateway.tenants import TenantStore, create_tenant
"""

from tensafe.gateway.app import create_app
from tensafe.gateway.settings import ModelSpec, Settings

__all__ = ["ModelSpec", "Settings", "create_app"]
