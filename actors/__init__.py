"""actors layer of Marquee."""
