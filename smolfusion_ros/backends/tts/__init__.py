"""Text-to-speech back ends."""
