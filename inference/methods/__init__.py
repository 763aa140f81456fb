"""Registration methods. Each maps a (fixed, moving) image pair to a challenge displacement field."""
