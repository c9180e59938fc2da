"""bandits layer of Marquee."""
