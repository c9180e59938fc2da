"""experiments layer of Marquee."""
