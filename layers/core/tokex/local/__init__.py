"""`tokex local`: the whole system on one machine, on the real code path."""
