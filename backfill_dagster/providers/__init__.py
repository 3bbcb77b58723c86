"""Market-data providers: one module per provider (a pure parser plus a thin client), the request
planner, and the router that picks a provider per partition. Providers never touch the store."""
