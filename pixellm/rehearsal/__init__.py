"""Full-width rehearsal of the 7B recipe on CPU: real-size data, real layouts, few steps."""
