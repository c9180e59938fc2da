"""deployments layer of Marquee."""
