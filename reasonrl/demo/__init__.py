"""The embedded default: a small reasoning policy and the recipe `reasonrl train` runs with no arguments."""
