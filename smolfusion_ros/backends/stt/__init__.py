"""Speech-to-text back ends."""
