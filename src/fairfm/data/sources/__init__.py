"""One module per dataset family; each registers its sources with ``@register_dataset``."""
