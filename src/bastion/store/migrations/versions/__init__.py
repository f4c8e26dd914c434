"""One module per revision; each later revision names its predecessor in ``down_revision``."""
