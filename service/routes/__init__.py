"""HTTP routes, one module per group: recommend, admin, health, metrics, demo."""
