"""Model back ends behind small protocols; nodes pick them by name through `registry`."""
