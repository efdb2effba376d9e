"""Full-screen and modal views of the TUI."""
