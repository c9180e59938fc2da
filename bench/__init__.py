"""bench layer of Marquee."""
