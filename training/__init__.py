"""training layer of Marquee."""
